"""The descriptor pool every edgecnn stub registers into (scripts/gen_protos.py wires it).

edgecnn's protos share package ``inference`` and file names with Triton's, so adding them to
protobuf's default pool would clash with tritonclient's stubs in the same process
("duplicate file name model_config.proto"). A private pool lets both coexist; on the wire
only the service and field numbers matter.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
