#!/usr/bin/env bash
# Pushes one OCI image layout built by `make oci` to a registry (`make push`).
#
#   deploy/oci/push.sh LAYOUT TAG IMAGE
#   deploy/oci/push.sh dist/oci-oci 0.1.0 ghcr.io/acme/tokengate:0.1.0
#
# Uses the first of skopeo, oras, crane found on PATH (PUSH_TOOL=skopeo|oras|crane picks
# one). Log in first with that tool (`skopeo login`, `oras login`, `crane auth login`) or
# have credentials in ~/.docker/config.json. INSECURE=1 allows a plain-HTTP or
# self-signed registry (e.g. a local test registry on 127.0.0.1).
#
# The image is pushed as built: the manifest digest in the registry is the one in
# dist/oci.json — the value for Istio's and Envoy Gateway's `sha256` field. After the push
# the registry's digest is compared with it and the script fails on any difference.
set -euo pipefail

die() { echo "push.sh: $*" >&2; exit 1; }
[[ $# == 3 ]] || die "usage: push.sh LAYOUT TAG IMAGE  (IMAGE like registry.example.com/team/tokengate:0.1.0)"
layout="$1" tag="$2" image="$3"
[[ -f "$layout/index.json" && -f "$layout/oci-layout" ]] || die "$layout is not an OCI image layout: run 'make oci'"
case "$image" in
*://*) die "IMAGE is registry/repository:tag, without a scheme (got $image)" ;;
*/*) ;;
*) die "IMAGE must name a registry and a repository, like registry.example.com/tokengate:0.1.0 (got $image)" ;;
esac
insecure="${INSECURE:-}"
[[ $insecure == 0 || $insecure == false ]] && insecure=""

# The manifest digest of the layout's image tagged TAG.
expected="$(python3 - "$layout" "$tag" <<'PY'
import json, sys
layout, tag = sys.argv[1:3]
index = json.load(open(f"{layout}/index.json"))
for m in index.get("manifests", []):
    if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
        print(m["digest"])
        break
else:
    sys.exit(f"push.sh: no image tagged {tag} in {layout}")
PY
)"

tool="${PUSH_TOOL:-}"
if [[ -z $tool ]]; then
    for candidate in skopeo oras crane; do
        if command -v "$candidate" >/dev/null 2>&1; then tool="$candidate"; break; fi
    done
fi
[[ -n $tool ]] || die "none of skopeo, oras, crane found: install one (Debian: apt-get install skopeo)"
command -v "$tool" >/dev/null 2>&1 || die "$tool not found"

digestfile="$(mktemp)"
trap 'rm -f "$digestfile"' EXIT
echo "push.sh: $layout:$tag -> $image with $tool" >&2
case "$tool" in
skopeo)
    # --preserve-digests: copy blobs and manifest as they are (no recompression, no
    # conversion), or fail.
    skopeo copy --preserve-digests ${insecure:+--dest-tls-verify=false} \
        --digestfile "$digestfile" "oci:$layout:$tag" "docker://$image"
    pushed="$(cat "$digestfile")"
    ;;
oras)
    oras cp ${insecure:+--to-plain-http} --from-oci-layout "$layout:$tag" "$image"
    pushed="$(oras resolve ${insecure:+--plain-http} "$image")"
    ;;
crane)
    crane push ${insecure:+--insecure} "$layout" "$image"
    pushed="$(crane digest ${insecure:+--insecure} "$image")"
    ;;
*) die "PUSH_TOOL must be skopeo, oras or crane (got $tool)" ;;
esac

[[ $pushed == "$expected" ]] || die "the registry has $image at $pushed, expected $expected"
repo="${image%:*}"
[[ $repo == */* && ${image##*/} == *:* ]] || repo="$image"
echo "pushed $repo@$expected"
