#!/usr/bin/env python3
"""Convert an Anchor >= 0.30 IDL (spec 0.1.0) to the legacy format anchorpy 0.21 reads.

    python contracts/scripts/idl_to_legacy.py contracts/idl/dgpu_escrow.json > contracts/idl/dgpu_escrow.legacy.json

The legacy format is the one Anchor <= 0.29 wrote: names in camelCase (anchorpy snake-cases them
back and derives the default discriminators ``sha256("global:<snake>")[:8]``,
``sha256("account:<Name>")[:8]``, ``sha256("event:<Name>")[:8]`` from them), ``isMut``/``isSigner``
on accounts, ``publicKey`` for ``pubkey``, ``{"defined": "Name"}``, account and event layouts
inline rather than in ``types``, and the address under ``metadata``. PDA and fixed-address hints
have no legacy form that anchorpy 0.21 uses and are dropped.

The conversion refuses an IDL it cannot express faithfully: a non-default discriminator (anchorpy
0.21 would compute another one), generics, or an unknown type form. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

__all__ = ["camel", "convert", "default_discriminator", "snake"]

_SCALARS = {"bool", "u8", "i8", "u16", "i16", "u32", "i32", "f32", "u64", "i64", "f64", "u128", "i128",
            "u256", "i256", "bytes", "string"}


def camel(name: str) -> str:
    """``rate_per_minute`` -> ``ratePerMinute`` (as Anchor <= 0.29 wrote names)."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def snake(name: str) -> str:
    """``ratePerMinute`` -> ``rate_per_minute`` (what anchorpy derives discriminators from)."""
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i > 0 and not name[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def default_discriminator(namespace: str, name: str) -> list[int]:
    return list(hashlib.sha256(f"{namespace}:{name}".encode()).digest()[:8])


def _type(t: Any) -> Any:
    if isinstance(t, str):
        if t == "pubkey":
            return "publicKey"
        if t in _SCALARS:
            return t
        raise ValueError(f"unsupported type {t!r}")
    if isinstance(t, dict):
        if "defined" in t:
            defined = t["defined"]
            if isinstance(defined, dict):
                if defined.get("generics"):
                    raise ValueError(f"generic type {defined['name']!r} has no legacy form")
                return {"defined": defined["name"]}
            return {"defined": defined}
        if "option" in t:
            return {"option": _type(t["option"])}
        if "vec" in t:
            return {"vec": _type(t["vec"])}
        if "array" in t:
            inner, length = t["array"]
            if not isinstance(length, int):
                raise ValueError(f"generic array length {length!r} has no legacy form")
            return {"array": [_type(inner), length]}
    raise ValueError(f"unsupported type {t!r}")


def _docs(item: dict[str, Any]) -> dict[str, Any]:
    return {"docs": item["docs"]} if item.get("docs") else {}


def _fields(fields: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": camel(f["name"]), **_docs(f), "type": _type(f["type"])} for f in fields]


def _typedef_body(ty: dict[str, Any]) -> dict[str, Any]:
    kind = ty["kind"]
    if kind == "struct":
        fields = ty.get("fields", [])
        if fields and not isinstance(fields[0], dict):
            raise ValueError("tuple structs have no legacy form")
        return {"kind": "struct", "fields": _fields(fields)}
    if kind == "enum":
        variants = []
        for v in ty["variants"]:
            variant: dict[str, Any] = {"name": v["name"]}
            if v.get("fields"):
                fields = v["fields"]
                variant["fields"] = (_fields(fields) if isinstance(fields[0], dict)
                                     else [_type(f) for f in fields])
            variants.append(variant)
        return {"kind": "enum", "variants": variants}
    raise ValueError(f"unsupported type kind {kind!r}")


def _check_discriminator(item: dict[str, Any], namespace: str, name: str) -> None:
    want = default_discriminator(namespace, name)
    if item.get("discriminator") != want:
        raise ValueError(f"{namespace} {item['name']!r}: discriminator {item.get('discriminator')} is not the "
                         f"default {want}; anchorpy 0.21 cannot express it")


def _accounts(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for acc in items:
        if "accounts" in acc:  # a nested Accounts struct
            out.append({"name": camel(acc["name"]), **_docs(acc), "accounts": _accounts(acc["accounts"])})
            continue
        entry: dict[str, Any] = {
            "name": camel(acc["name"]),
            "isMut": bool(acc.get("writable", False)),
            "isSigner": bool(acc.get("signer", False)),
        }
        if acc.get("optional"):
            entry["isOptional"] = True
        entry.update(_docs(acc))
        out.append(entry)
    return out


def convert(idl: dict[str, Any]) -> dict[str, Any]:
    """The legacy form of ``idl`` (an Anchor IDL of spec 0.1.0)."""
    spec = idl.get("metadata", {}).get("spec")
    if spec != "0.1.0":
        raise ValueError(f"expected IDL spec 0.1.0, got {spec!r}")
    types = {t["name"]: t for t in idl.get("types", [])}
    if any(t.get("generics") for t in types.values()):
        raise ValueError("generic types have no legacy form")
    inline = set()

    accounts = []
    for acc in idl.get("accounts", []):
        _check_discriminator(acc, "account", acc["name"])
        accounts.append({"name": acc["name"], **_docs(types[acc["name"]]),
                         "type": _typedef_body(types[acc["name"]]["type"])})
        inline.add(acc["name"])

    events = []
    for ev in idl.get("events", []):
        _check_discriminator(ev, "event", ev["name"])
        body = types[ev["name"]]["type"]
        if body["kind"] != "struct":
            raise ValueError(f"event {ev['name']!r} is not a struct")
        events.append({"name": ev["name"],
                       "fields": [{**f, "index": False} for f in _fields(body.get("fields", []))]})
        inline.add(ev["name"])

    instructions = []
    for ix in idl["instructions"]:
        _check_discriminator(ix, "global", ix["name"])
        if snake(camel(ix["name"])) != ix["name"]:
            raise ValueError(f"instruction {ix['name']!r} does not survive camelCase -> snake_case")
        instructions.append({
            "name": camel(ix["name"]),
            **_docs(ix),
            "accounts": _accounts(ix["accounts"]),
            "args": [{"name": camel(a["name"]), "type": _type(a["type"])} for a in ix["args"]],
        })

    legacy: dict[str, Any] = {
        "version": idl["metadata"]["version"],
        "name": idl["metadata"]["name"],
        **_docs(idl),
    }
    if idl.get("constants"):
        legacy["constants"] = [{"name": c["name"], "type": _type(c["type"]), "value": c["value"]}
                               for c in idl["constants"]]
    legacy["instructions"] = instructions
    if accounts:
        legacy["accounts"] = accounts
    rest = [{"name": name, **_docs(t), "type": _typedef_body(t["type"])}
            for name, t in types.items() if name not in inline]
    if rest:
        legacy["types"] = rest
    if events:
        legacy["events"] = events
    if idl.get("errors"):
        legacy["errors"] = [{"code": e["code"], "name": e["name"], **({"msg": e["msg"]} if "msg" in e else {})}
                            for e in idl["errors"]]
    legacy["metadata"] = {"address": idl["address"]}
    return legacy


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        idl = json.load(f)
    sys.stdout.write(json.dumps(convert(idl), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
