"""A small kustomize renderer for the subset deploy/k8s uses: resources, patches (strategic merge
or JSON6902, by path or inline, optionally with a target) and images. Anything else in a
kustomization.yaml fails loudly. tests/deploy/test_k8s.py cross-checks it against
`kubectl kustomize` wherever kubectl is installed.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.files import load_yaml

# Strategic-merge keys of the list fields deploy/k8s patches; other lists are replaced whole.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name", "volumeMounts": "mountPath"}


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        merged_list = [copy.deepcopy(x) for x in base]
        for item in patch:
            match = next((i for i, x in enumerate(merged_list) if x.get(key) == item.get(key)), None)
            if match is None:
                merged_list.append(copy.deepcopy(item))
            else:
                merged_list[match] = strategic_merge(merged_list[match], item)
        return merged_list
    return copy.deepcopy(patch)


def json6902(doc: dict, ops: list[dict]) -> dict:
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] == "add" and isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), copy.deepcopy(op["value"]))
        elif op["op"] in ("add", "replace"):
            if op["op"] == "replace":
                assert (int(last) < len(node)) if isinstance(node, list) else last in node, op
            node[int(last) if isinstance(node, list) else last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        else:
            raise AssertionError(f"JSON6902 op {op['op']!r} is outside this renderer's subset")
    return doc


def ident(doc: dict) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def _matches(doc: dict, target: dict) -> bool:
    return all(doc.get(k) == v if k != "name" else doc["metadata"]["name"] == v for k, v in target.items())


def _set_images(node: Any, images: list[dict]) -> None:
    if isinstance(node, dict):
        for field in ("containers", "initContainers"):
            for container in node.get(field, []) if isinstance(node.get(field), list) else []:
                name = re.split(r"[@]|:(?=[^/]*$)", container["image"])[0]
                for image in images:
                    if image["name"] == name:
                        new = image.get("newName", name)
                        container["image"] = f"{new}:{image['newTag']}" if "newTag" in image else new
        for value in node.values():
            _set_images(value, images)
    elif isinstance(node, list):
        for value in node:
            _set_images(value, images)


KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "patches", "images"}


def render_kustomization(folder: Path) -> list[dict]:
    """kustomize build of folder (the subset above)."""
    kustomization = load_yaml(folder / "kustomization.yaml")
    unknown = set(kustomization) - KUSTOMIZE_FIELDS
    assert not unknown, f"{folder}: fields outside the test renderer's subset: {sorted(unknown)}"
    docs: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = (folder / entry).resolve()
        docs += render_kustomization(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    idents = [ident(d) for d in docs]
    assert len(set(idents)) == len(idents), f"{folder}: duplicate resources {idents}"
    for entry in kustomization.get("patches", []):
        patch = yaml.safe_load((folder / entry["path"]).read_text() if "path" in entry else entry["patch"])
        if isinstance(patch, list):
            targets = [i for i, d in enumerate(docs) if _matches(d, entry["target"])]
            assert targets, f"{folder}: patch target {entry['target']} matches nothing"
            for i in targets:
                docs[i] = json6902(docs[i], patch)
        else:
            found = [i for i, d in enumerate(docs) if ident(d) == ident(patch)]
            assert found, f"{folder}: patch {entry} matches no resource"
            docs[found[0]] = strategic_merge(docs[found[0]], patch)
    _set_images(docs, kustomization.get("images", []))
    return docs



def by_kind(docs: list[dict]) -> dict[str, dict]:
    kinds = [d["kind"] for d in docs]
    assert len(set(kinds)) == len(kinds), kinds
    return {d["kind"]: d for d in docs}


def referenced(folder: Path) -> tuple[set[Path], set[Path]]:
    """(resource files, patch files) that folder's kustomization names, following bases."""
    kustomization = load_yaml(folder / "kustomization.yaml")
    resources: set[Path] = set()
    patches = {(folder / p["path"]).resolve() for p in kustomization.get("patches", []) if "path" in p}
    for entry in kustomization.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            more_resources, more_patches = referenced(path)
            resources |= more_resources
            patches |= more_patches
        else:
            resources.add(path)
    return resources, patches
