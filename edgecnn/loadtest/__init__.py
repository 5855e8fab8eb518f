"""`edgecnn loadtest`: closed- and open-loop load against an edgecnn (or any Open Inference
Protocol) server, with HDR latency histograms merged across client processes. No torch here."""
