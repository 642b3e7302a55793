#!/usr/bin/env python3
"""Helpers for deploy/oci/test.sh (Python 3 standard library only).

  ocitest.py check-layout LAYOUT VARIANT MODULE SUMMARY [DIGEST]
      The layout's one image has exactly the variant's layers and media types, every blob
      matches its digest, the module extracted the way Istio and Envoy Gateway do it equals
      MODULE, the annotations carry version, revision and the module's sha256 (from the
      SUMMARY dist/oci.json), and the compat layer is a reproducible tar.gz. With DIGEST,
      the manifest's digest must be DIGEST.
  ocitest.py fetch REGISTRY REPOSITORY DIGEST VARIANT MODULE SUMMARY
      Pulls REPOSITORY@DIGEST over the registry HTTP API (plain HTTP, anonymous) as Istio's
      and Envoy Gateway's image fetchers do, verifies every digest, and checks the image as check-layout does.
  ocitest.py same-tree DIR1 DIR2
      The two directory trees hold the same files with the same bytes.
  ocitest.py embedded FILE OUTDIR
      Writes each tokengate document embedded in a YAML manifest (Istio pluginConfig,
      Envoy Gateway config, Envoy StringValue value) to OUTDIR/N.json; prints N per document.
  ocitest.py render-envoy SRC OUT KEY=VALUE...
      SRC with exact substitutions (each must occur exactly once) and, with jwks=FILE,
      the inline JWKS of every provider replaced by FILE.
  ocitest.py extract LAYOUT OUT
      Writes the module of the layout's image, found as Istio does, to OUT.
  ocitest.py echo PORT LOG
      An upstream on 127.0.0.1:PORT answering every request with 200 and its headers as
      JSON; appends each request's path to LOG.
"""

import gzip
import hashlib
import http.server
import io
import json
import os
import re
import sys
import tarfile
import urllib.request

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"


class Failure(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise Failure(message)


def digest_of(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def extract_plugin(layer_gz):
    """What Istio/EG do with a compat layer: gunzip, untar, the entry named plugin.wasm."""
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer_gz)), mode="r:") as tar:
        for member in tar.getmembers():
            if os.path.basename(member.name) == "plugin.wasm":
                return tar.extractfile(member).read()
    raise Failure("plugin.wasm not found in the layer")


def istio_extract(manifest, blob):
    """The module, as Istio's and Envoy Gateway's image fetchers find it (pkg/wasm/imagefetcher.go):
    a Docker manifest -> last layer must be a Docker tar+gzip; else the last layer an OCI
    tar+gzip ("compat"); else exactly two layers, one of them the wasm content type ("oci")."""
    layers = manifest.get("layers", [])
    expect(layers, "no layers")
    if manifest.get("mediaType") == "application/vnd.docker.distribution.manifest.v2+json":
        expect(layers[-1]["mediaType"] == DOCKER_LAYER_GZIP, "docker image: last layer not tar+gzip")
        return extract_plugin(blob(layers[-1]))
    if layers[-1]["mediaType"] == OCI_LAYER_GZIP:
        return extract_plugin(blob(layers[-1]))
    expect(len(layers) == 2, f"oci variant needs 2 layers, got {len(layers)}")
    for layer in layers:
        if layer["mediaType"] == WASM_LAYER:
            return blob(layer)
    raise Failure(f"no layer of type {WASM_LAYER}")


def check_manifest(manifest, variant, blob, module, summary):
    """Exactly the layers and media types of the variant, and its annotations."""
    expect(manifest.get("schemaVersion") == 2, "schemaVersion is not 2")
    expect(manifest.get("mediaType") == OCI_MANIFEST, f"manifest mediaType {manifest.get('mediaType')}")
    config, layers = manifest["config"], manifest["layers"]
    module_digest = digest_of(module)
    if variant == "compat":
        expect(config["mediaType"] == OCI_CONFIG, f"config mediaType {config['mediaType']}")
        expect([layer["mediaType"] for layer in layers] == [OCI_LAYER_GZIP],
               f"compat layers {[layer['mediaType'] for layer in layers]}")
        layer_gz = blob(layers[0])
        # Reproducible gzip: no file name (FLG.FNAME), mtime 0.
        expect(layer_gz[:3] == b"\x1f\x8b\x08", "layer is not gzip")
        expect(not layer_gz[3] & 0x08, "gzip header carries a file name")
        expect(layer_gz[4:8] == b"\0\0\0\0", "gzip header carries a timestamp")
        tar_data = gzip.decompress(layer_gz)
        with tarfile.open(fileobj=io.BytesIO(tar_data), mode="r:") as tar:
            members = tar.getmembers()
            expect([m.name for m in members] == ["plugin.wasm"],
                   f"tar entries {[m.name for m in members]}")
            for m in members:
                expect(m.isreg() and m.mtime == 0 and m.uid == 0 and m.gid == 0
                       and m.mode == 0o644 and m.uname == "" and m.gname == "",
                       f"tar entry {m.name}: type {m.type} mtime {m.mtime} uid {m.uid} gid {m.gid} "
                       f"mode {oct(m.mode)} uname {m.uname!r} gname {m.gname!r}")
        image_config = json.loads(blob(config))
        expect(image_config.get("rootfs") == {"type": "layers", "diff_ids": [digest_of(tar_data)]},
               "config rootfs.diff_ids is not the layer's uncompressed digest")
        expect("created" not in image_config and "history" not in image_config,
               "config carries a timestamp")
        expect(manifest.get("annotations", {}).get("module.wasm.image/variant") == "compat",
               "no module.wasm.image/variant=compat annotation")
    else:
        expect(config["mediaType"] == WASM_CONFIG, f"config mediaType {config['mediaType']}")
        expect([layer["mediaType"] for layer in layers] == [WASM_CONFIG, WASM_LAYER],
               f"oci layers {[layer['mediaType'] for layer in layers]}")
        expect(layers[0]["digest"] == config["digest"] and layers[0]["size"] == config["size"],
               "layer 0 is not the config blob")
        expect(layers[1]["digest"] == module_digest,
               f"layer 1 digest {layers[1]['digest']} is not the module's sha256 {module_digest}")
        runtime = json.loads(blob(config))
        expect(runtime.get("type") == "envoy_proxy", "runtime config type is not envoy_proxy")
        expect(runtime.get("abiVersions") == summary["module"]["abiVersions"], "abiVersions")
    notes = manifest.get("annotations", {})
    wanted = {
        "org.opencontainers.image.version": summary["version"],
        "org.opencontainers.image.revision": summary["revision"],
        "tokengate.module.sha256": module_digest.split(":", 1)[1],
    }
    for key, value in wanted.items():
        expect(notes.get(key) == value, f"annotation {key} = {notes.get(key)!r}, expected {value!r}")
    expect(not any("created" in key for key in notes), "an annotation carries a timestamp")
    extracted = istio_extract(manifest, blob)
    expect(extracted == module, "the module extracted as Istio/Envoy Gateway do differs from the built .wasm")


def check_layout(layout, variant, module_path, summary_path, want_digest=None):
    module = open(module_path, "rb").read()
    summary = json.load(open(summary_path))
    expect(digest_of(module).split(":", 1)[1] == summary["module"]["sha256"],
           f"{module_path} is not the module in {summary_path}")
    layout_file = json.load(open(os.path.join(layout, "oci-layout")))
    expect(layout_file == {"imageLayoutVersion": "1.0.0"}, "oci-layout")
    index = json.load(open(os.path.join(layout, "index.json")))
    expect(len(index["manifests"]) == 1, f"{len(index['manifests'])} images in index.json")
    descriptor = index["manifests"][0]

    def blob(desc):
        path = os.path.join(layout, "blobs", *desc["digest"].split(":", 1))
        data = open(path, "rb").read()
        expect(digest_of(data) == desc["digest"], f"blob {desc['digest']} does not match its digest")
        expect(len(data) == desc["size"], f"blob {desc['digest']}: size {len(data)} != {desc['size']}")
        return data

    expect(descriptor["mediaType"] == OCI_MANIFEST, f"index entry mediaType {descriptor['mediaType']}")
    if want_digest:
        expect(descriptor["digest"] == want_digest, f"manifest digest {descriptor['digest']} != {want_digest}")
    manifest = json.loads(blob(descriptor))
    check_manifest(manifest, variant, blob, module, summary)
    print(f"{layout}: {variant} variant, manifest {descriptor['digest']}, layers "
          + ", ".join(layer["mediaType"] for layer in manifest["layers"]))


def fetch(registry, repository, digest, variant, module_path, summary_path):
    module = open(module_path, "rb").read()
    base = f"http://{registry}/v2/{repository}"

    def get(url, accept=None):
        request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read(), response.headers.get("Content-Type", "")

    # The Accept list go-containerregistry sends (Docker and OCI manifests and indexes).
    accept = ", ".join([OCI_MANIFEST, "application/vnd.oci.image.index.v1+json",
                        "application/vnd.docker.distribution.manifest.v2+json",
                        "application/vnd.docker.distribution.manifest.list.v2+json"])
    raw, content_type = get(f"{base}/manifests/{digest}", accept)
    expect(digest_of(raw) == digest, f"manifest served for {digest} has digest {digest_of(raw)}")
    expect(content_type.split(";")[0].strip() == OCI_MANIFEST, f"manifest served as {content_type}")
    manifest = json.loads(raw)

    def blob(desc):
        data, _ = get(f"{base}/blobs/{desc['digest']}")
        expect(digest_of(data) == desc["digest"], f"blob {desc['digest']} does not match its digest")
        expect(len(data) == desc["size"], f"blob {desc['digest']}: size mismatch")
        return data

    summary = json.load(open(summary_path))
    check_manifest(manifest, variant, blob, module, summary)
    print(f"{registry}/{repository}@{digest}: {variant} variant pulled over the registry API, "
          "module bytes equal the built .wasm")


def same_tree(a, b):
    def files(root):
        out = {}
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = os.path.join(dirpath, name)
                out[os.path.relpath(path, root)] = open(path, "rb").read()
        return out
    fa, fb = files(a), files(b)
    expect(sorted(fa) == sorted(fb), f"different files: {sorted(set(fa) ^ set(fb))}")
    differ = [name for name in sorted(fa) if fa[name] != fb[name]]
    expect(not differ, f"different bytes: {differ}")
    print(f"{a} and {b}: {len(fa)} identical files")


def embedded(path, outdir):
    """tokengate documents in a YAML manifest: a key (pluginConfig, config, value) whose
    value is a JSON object written on the following, more indented lines, or a literal
    block (`value: |`) holding JSON."""
    lines = open(path).read().split("\n")
    found = 0
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(?:- )?(pluginConfig|config|value):\s*(\|[-+]?)?\s*$", line)
        if not m:
            continue
        indent = len(m.group(1))
        block = []
        for other in lines[i + 1:]:
            if other.strip() and len(other) - len(other.lstrip(" ")) <= indent:
                break
            block.append(other)
        text = "\n".join(block).strip()
        if not text.startswith("{"):
            continue
        try:
            doc = json.loads(text)
        except ValueError as err:
            raise Failure(f"{path}:{i + 1}: {m.group(2)} is not JSON: {err}")
        if isinstance(doc, dict) and "providers" in doc:
            found += 1
            with open(os.path.join(outdir, f"{found}.json"), "w") as f:
                json.dump(doc, f, indent=2)
            print(found, i + 1)
    expect(found, f"{path}: no tokengate document found")


def render_envoy(src, out, pairs):
    text = open(src).read()
    jwks = None
    for pair in pairs:
        key, value = pair.split("=", 1)
        if key == "jwks":
            jwks = json.load(open(value))
            continue
        count = text.count(key)
        expect(count == 1, f"{src}: {key!r} occurs {count} times, expected once")
        text = text.replace(key, value)
    if jwks is not None:
        lines = text.split("\n")
        for i, line in enumerate(lines):
            m = re.match(r"^(\s*)value: \|\s*$", line)
            if not m:
                continue
            indent = len(m.group(1))
            end = i + 1
            while end < len(lines) and (not lines[end].strip()
                                        or len(lines[end]) - len(lines[end].lstrip(" ")) > indent):
                end += 1
            doc = json.loads("\n".join(lines[i + 1:end]))
            for provider in doc["providers"].values():
                provider["jwks"] = {"inline": jwks}
            pad = " " * (indent + 2)
            lines[i + 1:end] = [pad + part for part in json.dumps(doc, indent=2).split("\n")]
            break
        else:
            raise Failure(f"{src}: no `value: |` block")
        text = "\n".join(lines)
    with open(out, "w") as f:
        f.write(text)


def extract(layout, out):
    index = json.load(open(os.path.join(layout, "index.json")))

    def blob(desc):
        return open(os.path.join(layout, "blobs", *desc["digest"].split(":", 1)), "rb").read()

    manifest = json.loads(blob(index["manifests"][0]))
    with open(out, "wb") as f:
        f.write(istio_extract(manifest, blob))


class Echo(http.server.BaseHTTPRequestHandler):
    log_path = None

    def do_GET(self):
        with open(self.log_path, "a") as log:
            log.write(self.path + "\n")
        body = json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}},
                          indent=1).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    args = sys.argv[1:]
    try:
        if args[:1] == ["check-layout"] and len(args) in (5, 6):
            check_layout(*args[1:])
        elif args[:1] == ["fetch"] and len(args) == 7:
            fetch(*args[1:])
        elif args[:1] == ["same-tree"] and len(args) == 3:
            same_tree(*args[1:])
        elif args[:1] == ["embedded"] and len(args) == 3:
            embedded(*args[1:])
        elif args[:1] == ["render-envoy"] and len(args) >= 3:
            render_envoy(args[1], args[2], args[3:])
        elif args[:1] == ["extract"] and len(args) == 3:
            extract(*args[1:])
        elif args[:1] == ["echo"] and len(args) == 3:
            Echo.log_path = args[2]
            http.server.HTTPServer(("127.0.0.1", int(args[1])), Echo).serve_forever()
        else:
            sys.exit(__doc__)
    except Failure as err:
        sys.exit(f"ocitest.py {args[0]}: {err}")


if __name__ == "__main__":
    main()
