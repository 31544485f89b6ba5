#!/usr/bin/env python3
"""Make ComfyUI API-format JSON from UI-format workflow JSON, using /object_info input definitions.

    python scripts/ui_to_api.py workflows/text_to_video.json --server 127.0.0.1:8188 -o workflows/text_to_video_api.json
    python scripts/ui_to_api.py workflows/*.json --object-info object_info.json --check   # validate only

Widget values are matched to inputs in the node's declared input order (required, then optional);
inputs with `control_after_generate` (seeds) hold one extra value right after theirs, and an upload
widget (`image_upload`, `video_upload`) one extra value after all the others, where the front end puts
it. A widget input with a link (a widget turned into an input) takes the link. `check_ui_workflow` lists
problems: unknown node types, links whose type differs from the source output or the target input.
Standard library only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
EXTRA_WIDGET_FLAGS = ("control_after_generate",)
UPLOAD_FLAGS = ("image_upload", "video_upload")
MUTED, BYPASSED = 2, 4


def input_definitions(info: dict) -> list[tuple[str, object, dict, bool]]:
    """(name, type, options, required) in declared order."""
    order = info.get("input_order") or {k: list(v) for k, v in info.get("input", {}).items()}
    out = []
    for section in ("required", "optional"):
        decls = info.get("input", {}).get(section, {})
        for name in order.get(section, []):
            decl = decls[name]
            kind = decl[0]
            opts = decl[1] if len(decl) > 1 and isinstance(decl[1], dict) else {}
            out.append((name, kind, opts, section == "required"))
    return out


def is_widget(kind) -> bool:
    return isinstance(kind, list) or kind in WIDGET_TYPES


def type_name(kind) -> str:
    return "COMBO" if isinstance(kind, list) else str(kind)


def types_match(a: str, b: str) -> bool:
    if "*" in (a, b):
        return True
    return bool(set(a.split(",")) & set(b.split(",")))


def check_ui_workflow(ui: dict, object_info: dict) -> list[str]:
    """Problems of a UI-format workflow against /object_info (empty list: consistent)."""
    problems = []
    nodes = {n["id"]: n for n in ui.get("nodes", [])}
    for n in nodes.values():
        if n["type"] not in object_info:
            problems.append(f"node {n['id']}: unknown node type {n['type']!r}")
    for link_id, src, src_slot, dst, dst_slot, ltype in ui.get("links", []):
        if src not in nodes or dst not in nodes:
            problems.append(f"link {link_id}: joins missing node {src if src not in nodes else dst}")
            continue
        s, d = nodes[src], nodes[dst]
        if s["type"] in object_info:
            outs = object_info[s["type"]]["output"]
            if src_slot >= len(outs):
                problems.append(f"link {link_id}: {s['type']} has no output {src_slot}")
            elif not types_match(str(outs[src_slot]), ltype):
                problems.append(f"link {link_id}: type {ltype} but {s['type']} output {src_slot} is {outs[src_slot]}")
        if d["type"] in object_info:
            ui_inputs = d.get("inputs", [])
            if dst_slot >= len(ui_inputs) or ui_inputs[dst_slot].get("link") != link_id:
                problems.append(f"link {link_id}: node {dst} input slot {dst_slot} does not refer back to it")
                continue
            name = ui_inputs[dst_slot]["name"]
            decls = {n_: k for n_, k, _, _ in input_definitions(object_info[d["type"]])}
            if name not in decls:
                problems.append(f"link {link_id}: {d['type']} has no input {name!r}")
            elif not types_match(type_name(decls[name]), ltype):
                problems.append(f"link {link_id}: type {ltype} into {d['type']}.{name}, declared {type_name(decls[name])}")
    return problems


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """API-format graph {id: {"inputs", "class_type", "_meta": {"title"}}}; raises ValueError on problems."""
    problems = check_ui_workflow(ui, object_info)
    if problems:
        raise ValueError("; ".join(problems))
    links = {l[0]: l for l in ui.get("links", [])}
    api = {}
    for n in sorted(ui.get("nodes", []), key=lambda n: n["id"]):
        if n.get("mode") == MUTED:
            continue
        if n.get("mode") == BYPASSED:
            raise ValueError(f"node {n['id']} ({n['type']}) is bypassed; unbypass or remove it before converting")
        info = object_info[n["type"]]
        linked = {i["name"]: links[i["link"]] for i in n.get("inputs", []) if i.get("link") is not None}
        values = n.get("widgets_values", [])
        by_name = values if isinstance(values, dict) else None
        pos = 0
        uploads = 0
        inputs = {}
        for name, kind, opts, required in input_definitions(info):
            if is_widget(kind):
                if by_name is not None:
                    value, present = by_name.get(name), name in by_name
                else:
                    present = pos < len(values)
                    value = values[pos] if present else None
                    pos += 1 + sum(bool(opts.get(flag)) for flag in EXTRA_WIDGET_FLAGS)
                uploads += any(opts.get(flag) for flag in UPLOAD_FLAGS)
                if name in linked:
                    _, src, slot, *_ = linked[name]
                    inputs[name] = [str(src), slot]
                elif present:
                    inputs[name] = value
                elif required:
                    raise ValueError(f"node {n['id']} ({n['type']}): no widget value for {name!r}")
            elif name in linked:
                _, src, slot, *_ = linked[name]
                inputs[name] = [str(src), slot]
            elif required:
                raise ValueError(f"node {n['id']} ({n['type']}): required input {name!r} is not connected")
        if by_name is None and pos + min(uploads, 1) < len(values):
            raise ValueError(f"node {n['id']} ({n['type']}): {len(values)} widget values, "
                             f"{pos + min(uploads, 1)} expected")
        api[str(n["id"])] = {"inputs": inputs, "class_type": n["type"],
                             "_meta": {"title": n.get("title") or info.get("display_name") or n["type"]}}
    return api


def load_object_info(server: str | None, path: str | None) -> dict:
    if path:
        return json.loads(Path(path).read_text())
    url = (server if "://" in server else f"http://{server}") + "/object_info"
    with urllib.request.urlopen(url, timeout=60) as resp:
        return json.loads(resp.read())


def write_json_atomic(data, path: Path):
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workflows", nargs="+", help="UI-format workflow JSON files")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--server", default="127.0.0.1:8188", help="read /object_info from this ComfyUI")
    src.add_argument("--object-info", help="read input definitions from a saved /object_info JSON")
    p.add_argument("-o", "--output", help="output file (one workflow) ; default: <name>_api.json beside it")
    p.add_argument("--check", action="store_true", help="only validate, write nothing")
    args = p.parse_args(argv)
    info = load_object_info(None if args.object_info else args.server, args.object_info)
    status = 0
    for wf in args.workflows:
        path = Path(wf)
        try:
            api = ui_to_api(json.loads(path.read_text()), info)
        except ValueError as e:
            print(f"{path}: {e}", file=sys.stderr)
            status = 1
            continue
        if not args.check:
            out = Path(args.output) if args.output and len(args.workflows) == 1 else path.with_name(path.stem + "_api.json")
            write_json_atomic(api, out)
            print(f"wrote {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
