#!/usr/bin/env python3
"""Builds OCI image layouts of the tokengate module, offline, reproducibly (`make oci`).

Two variants, both read by Istio's WasmPlugin and Envoy Gateway's EnvoyExtensionPolicy
(their image fetchers follow https://github.com/solo-io/wasm/tree/master/spec):

  compat  one layer, application/vnd.oci.image.layer.v1.tar+gzip, a tar holding
          plugin.wasm; an ordinary OCI image config (os wasip1, architecture wasm);
          annotation module.wasm.image/variant=compat. Any registry and any image tool
          handles it.
  oci     config application/vnd.module.wasm.config.v1+json, which is also layer 0, and
          the module itself, unchanged, as layer 1 with media type
          application/vnd.module.wasm.content.layer.v1+wasm: that layer's digest is the
          sha256 of the module, so its blob URL can be given to plain Envoy as
          vm_config.code.remote with that sha256.

Reproducible: the same module, version and revision give byte-identical layouts and so
the same manifest digests. Nothing depends on the time, the user or the path: no
"created" fields; tar entries with mtime 0, uid/gid 0, no user/group names, mode 0644,
sorted; gzip with mtime 0 and no file name; JSON with a fixed key order and no spaces.

    build.py --wasm dist/tokengate.opt.wasm --out dist --tag 0.1.0 \\
             --version 0.1.0 --revision 0123456789ab

writes dist/oci-compat/ and dist/oci-oci/ (OCI image layouts, each with the one image
tagged --tag) and dist/oci.json (the module's sha256 and each variant's manifest digest).
Only the Python 3 standard library is used.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
VARIANTS = ("compat", "oci")
PLUGIN_FILE = "plugin.wasm"


def canonical_json(obj):
    """Compact JSON, keys in the order written here, ASCII only: stable bytes."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_leb128(data, pos):
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated LEB128")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def wasm_exports(module):
    """Names exported by a WebAssembly module (binary format, export section id 7)."""
    if module[:4] != b"\0asm" or module[4:8] != b"\x01\0\0\0":
        raise ValueError("not a WebAssembly module (bad magic or version)")
    pos, names = 8, []
    while pos < len(module):
        section_id = module[pos]
        size, pos = read_leb128(module, pos + 1)
        end = pos + size
        if end > len(module):
            raise ValueError("truncated section")
        if section_id == 7:
            count, p = read_leb128(module, pos)
            for _ in range(count):
                length, p = read_leb128(module, p)
                names.append(module[p:p + length].decode("utf-8"))
                p += length + 1  # name, export kind
                _, p = read_leb128(module, p)  # index
        pos = end
    return names


def tar_bytes(files):
    """An uncompressed tar of {name: bytes}: sorted, mtime 0, root-owned, mode 0644, ustar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            data = files[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gzip_bytes(data):
    # gzip.compress writes no file name; mtime 0 keeps the header constant.
    return gzip.compress(data, compresslevel=9, mtime=0)


class Layout:
    """An OCI image layout being written: blobs by digest, one tagged manifest."""

    def __init__(self, root):
        self.root = root
        os.makedirs(os.path.join(root, "blobs", "sha256"))
        self.write("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))

    def write(self, relpath, data):
        path = os.path.join(self.root, relpath)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o644)

    def blob(self, media_type, data, annotations=None):
        digest = sha256(data)
        self.write(os.path.join("blobs", "sha256", digest.split(":", 1)[1]), data)
        descriptor = {"mediaType": media_type, "digest": digest, "size": len(data)}
        if annotations:
            descriptor["annotations"] = annotations
        return descriptor

    def finish(self, manifest, tag):
        data = canonical_json(manifest)
        descriptor = self.blob(OCI_MANIFEST, data)
        descriptor["annotations"] = {"org.opencontainers.image.ref.name": tag}
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]}
        self.write("index.json", canonical_json(index))
        return descriptor["digest"], len(data)


def annotations(args, module_digest):
    return {
        "org.opencontainers.image.title": "tokengate",
        "org.opencontainers.image.description":
            "tokengate: JWT authentication and authorization for Envoy (proxy-wasm filter)",
        "org.opencontainers.image.version": args.version,
        "org.opencontainers.image.revision": args.revision,
        "org.opencontainers.image.licenses": args.license,
        "tokengate.module.sha256": module_digest.split(":", 1)[1],
    }


def build_compat(root, module, args):
    layout = Layout(root)
    tar = tar_bytes({PLUGIN_FILE: module})
    layer = layout.blob(OCI_LAYER_GZIP, gzip_bytes(tar))
    config = layout.blob(OCI_CONFIG, canonical_json({
        "architecture": "wasm",
        "os": "wasip1",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
    }))
    notes = annotations(args, sha256(module))
    notes["module.wasm.image/variant"] = "compat"
    return layout.finish({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": [layer],
        "annotations": notes,
    }, args.tag)


def build_oci(root, module, abi_versions, args):
    layout = Layout(root)
    runtime_config = canonical_json({
        "type": "envoy_proxy",
        "abiVersions": abi_versions,
        "config": {},
    })
    config = layout.blob(WASM_CONFIG, runtime_config)
    layer0 = layout.blob(WASM_CONFIG, runtime_config,
                         {"org.opencontainers.image.title": "runtime-config.json"})
    layer1 = layout.blob(WASM_LAYER, module, {"org.opencontainers.image.title": PLUGIN_FILE})
    return layout.finish({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": [layer0, layer1],
        "annotations": annotations(args, sha256(module)),
    }, args.tag)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wasm", required=True, help="the module (after wasm-opt)")
    parser.add_argument("--out", required=True, help="directory for oci-<variant>/ and oci.json")
    parser.add_argument("--tag", required=True, help="tag of the image inside each layout")
    parser.add_argument("--version", required=True)
    parser.add_argument("--revision", required=True)
    parser.add_argument("--license", default="Apache-2.0")
    args = parser.parse_args()

    with open(args.wasm, "rb") as f:
        module = f.read()
    try:
        exports = wasm_exports(module)
    except (ValueError, UnicodeDecodeError, IndexError) as err:
        sys.exit(f"build.py: {args.wasm}: {err}")
    abi_versions = sorted(name for name in exports if name.startswith("proxy_abi_version_"))
    if not abi_versions:
        sys.exit(f"build.py: {args.wasm} exports no proxy_abi_version_*: not a proxy-wasm module")

    os.makedirs(args.out, exist_ok=True)
    summary = {
        "module": {"file": os.path.basename(args.wasm), "sha256": sha256(module).split(":", 1)[1],
                   "size": len(module), "abiVersions": abi_versions},
        "version": args.version,
        "revision": args.revision,
        "tag": args.tag,
        "variants": {},
    }
    for variant in VARIANTS:
        final = os.path.join(args.out, f"oci-{variant}")
        staging = tempfile.mkdtemp(prefix=f".oci-{variant}.", dir=args.out)
        try:
            root = os.path.join(staging, "layout")
            if variant == "compat":
                digest, size = build_compat(root, module, args)
            else:
                digest, size = build_oci(root, module, abi_versions, args)
            shutil.rmtree(final, ignore_errors=True)
            os.rename(root, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        summary["variants"][variant] = {"layout": final, "reference": f"oci:{final}:{args.tag}",
                                        "manifest_digest": digest, "manifest_size": size}
        print(f"{final:<24} {args.tag:<12} manifest {digest}")
    with open(os.path.join(args.out, "oci.json"), "wb") as f:
        f.write(json.dumps(summary, indent=2).encode() + b"\n")
    print(f"module sha256 {summary['module']['sha256']} ({len(module)} bytes, "
          f"{', '.join(abi_versions)}) = layer 1 of oci-oci")


if __name__ == "__main__":
    main()
