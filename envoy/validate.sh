#!/usr/bin/env bash
# Checks every Envoy and tokengate configuration in the repository, then runs the demo as
# a smoke test. Run by `make validate` (which builds dist/tokengate.wasm and the CLI first).
#
#   1. `envoy --mode validate` on every Envoy YAML (envoy/envoy.yaml, ...). Validate mode
#      loads the .wasm and runs the filter's own configuration check, so the embedded
#      tokengate document is checked too; relative .wasm paths are resolved against the
#      working directory, so this runs from the repository root.
#   2. `tokengate check` on every tokengate JSON document: *.json files with "providers",
#      and the documents embedded in Envoy YAML files (google.protobuf.StringValue
#      `value:`); envoy/envoy.yaml must embed exactly envoy/tokengate.json.
#   3. The demo configuration, rendered by envoy/demo/render.sh into a temporary directory,
#      through both checks.
#   4. The JSON Schema: deploy/tokengate.schema.json must be exactly `tokengate schema`'s
#      output (the schema is generated from the configuration reader's field tables), and
#      every document of steps 2 and 3 must be valid under it — with python3's jsonschema
#      module when it is installed (a 2020-12 validator); skipped, and said so, otherwise.
#   5. The demo itself: DEMO_SMOKE=1 envoy/demo/run.sh on free ports (Envoy, echo service
#      and demo IdP; the filter fetches its keys from the IdP by OIDC discovery).
#
# tests/ is left out of the scan: its fixtures may be invalid on purpose, and the e2e tests
# validate their own configurations. Set SKIP_SMOKE=1 to skip step 5.
#
# Environment: ENVOY (command prefix, default .venv/bin/envoy), TOKENGATE_CLI,
# TOKENGATE_WASM (defaults target/release/tokengate, dist/tokengate.wasm).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ENVOY="${ENVOY:-$ROOT/.venv/bin/envoy}"
TOKENGATE_CLI="${TOKENGATE_CLI:-$ROOT/target/release/tokengate}"
TOKENGATE_WASM="${TOKENGATE_WASM:-$ROOT/dist/tokengate.wasm}"
export TOKENGATE_CLI TOKENGATE_WASM
read -r -a ENVOY_CMD <<<"$ENVOY"

die() { echo "validate.sh: $*" >&2; exit 1; }
command -v python3 >/dev/null || die "python3 is required"
[[ -x "$TOKENGATE_CLI" ]] || die "$TOKENGATE_CLI not found: run 'make cli'"
[[ -f "$TOKENGATE_WASM" ]] || die "$TOKENGATE_WASM not found: run 'make build'"
[[ ${#ENVOY_CMD[@]} -gt 0 ]] && command -v "${ENVOY_CMD[0]}" >/dev/null \
    || die "Envoy not found (ENVOY='$ENVOY'): run 'make envoy', or set ENVOY"

FAILED=0
TMP="$(mktemp -d)"
finish() {
    local rc=$?
    if [[ $FAILED == 0 && $rc == 0 ]]; then
        rm -rf "$TMP"
    else
        echo "validate.sh: files kept in $TMP" >&2
    fi
}
trap finish EXIT

pass() { printf 'ok    %s\n' "$1"; }
fail() {
    printf 'FAIL  %s\n' "$1"
    [[ -z ${2:-} ]] || sed 's/^/      /' "$2" | tail -n 15
    FAILED=1
}

# envoy_validate FILE [LABEL]
envoy_validate() {
    local file="$1" label="${2:-$1}"
    if timeout_cmd 120 "${ENVOY_CMD[@]}" --mode validate -c "$file" -l warning --disable-hot-restart \
        >"$TMP/out" 2>&1; then
        pass "envoy --mode validate $label"
    else
        fail "envoy --mode validate $label" "$TMP/out"
    fi
}

# tokengate_check FILE [LABEL] — also notes the document for the schema check (step 4),
# and shows `check`'s warnings (rules that can never match or never pass).
checked_docs=()
checked_labels=()
tokengate_check() {
    local file="$1" label="${2:-$1}"
    checked_docs+=("$file")
    checked_labels+=("$label")
    if "$TOKENGATE_CLI" check "$file" >"$TMP/out" 2>&1; then
        pass "tokengate check $label"
        grep '^warning: ' "$TMP/out" | sed 's/^/      /' || true
    else
        fail "tokengate check $label" "$TMP/out"
    fi
}

# timeout_cmd SECS CMD... — bounded when GNU timeout exists. --foreground keeps CMD in
# our process group, so Ctrl-C still reaches it (run.sh then stops what it started).
if timeout --foreground 5 true 2>/dev/null; then
    timeout_cmd() { timeout --foreground "$@"; }
else
    timeout_cmd() { shift; "$@"; }
fi

# --- 1, 2: files in the repository -----------------------------------------------------
# Lists repository files with the given extensions, outside build output and tests/.
repo_files() {
    local args=() ext
    for ext in "$@"; do args+=(-o -name "*.$ext"); done
    find . \( -path ./.git -o -path ./target -o -path ./dist -o -path ./.venv -o -path ./.run \
        -o -path ./fuzz -o -path ./tests -o -name node_modules \) -prune \
        -o -type f \( -false "${args[@]}" \) -print | sed 's|^\./||' | LC_ALL=C sort
}

envoy_yamls=()
while IFS= read -r f; do
    grep -qE '^(static_resources|dynamic_resources):' "$f" && envoy_yamls+=("$f")
done < <(repo_files yaml yml)

tokengate_jsons=()
while IFS= read -r f; do
    tokengate_jsons+=("$f")
done < <(repo_files json | python3 -c '
import json, sys
for path in sys.stdin.read().split("\n"):
    if not path:
        continue
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        continue
    if isinstance(doc, dict) and "providers" in doc:
        print(path)
')

[[ ${#envoy_yamls[@]} -gt 0 ]] || fail "no Envoy YAML found (expected envoy/envoy.yaml)"

for f in ${envoy_yamls[@]+"${envoy_yamls[@]}"}; do
    envoy_validate "$f"
done
for f in ${tokengate_jsons[@]+"${tokengate_jsons[@]}"}; do
    tokengate_check "$f"
done

# extract_embedded YAML OUTDIR — writes each tokengate document embedded in YAML as
# OUTDIR/N.json and prints "N LINE" per document. No YAML library: it reads the two forms
# used here, a literal block (`value: |`) and a JSON-encoded one-line string (`value: "..."`),
# of a `value:` within a few lines after `google.protobuf.StringValue`.
extract_embedded() {
    python3 - "$1" "$2" <<'PY'
import json, os, re, sys
path, outdir = sys.argv[1:3]
lines = open(path).read().split("\n")
found = 0
last_string_value = -100
for i, line in enumerate(lines):
    if "google.protobuf.StringValue" in line:
        last_string_value = i
        continue
    m = re.match(r"^(\s*)value:\s*(.*?)\s*$", line)
    if not m or i - last_string_value > 3:
        continue
    indent, rest = len(m.group(1)), m.group(2)
    text = None
    if re.fullmatch(r"\|[-+]?", rest):
        block = []
        for other in lines[i + 1:]:
            if other.strip() and len(other) - len(other.lstrip(" ")) <= indent:
                break
            block.append(other)
        while block and not block[-1].strip():
            block.pop()
        cut = min((len(b) - len(b.lstrip(" ")) for b in block if b.strip()), default=0)
        text = "\n".join(b[cut:] for b in block)
    elif rest.startswith('"'):
        try:
            text = json.loads(rest)
        except ValueError:
            pass
    elif rest.startswith("'") and rest.endswith("'"):
        text = rest[1:-1].replace("''", "'")
    if text is None:
        continue
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and "providers" in doc:
        found += 1
        with open(os.path.join(outdir, f"{found}.json"), "w") as f:
            json.dump(doc, f, indent=2)
        print(found, i + 1)
PY
}

# Documents embedded in the Envoy YAML files; YAML files whose document is also kept as a
# separate file, which must be the same document.
twin_of() {
    case "$1" in
    envoy/envoy.yaml) echo envoy/tokengate.json ;;
    esac
}
for f in ${envoy_yamls[@]+"${envoy_yamls[@]}"}; do
    dir="$TMP/embedded/${f//\//_}"
    mkdir -p "$dir"
    if ! extract_embedded "$f" "$dir" >"$TMP/embedded.list" 2>"$TMP/out"; then
        fail "reading the tokengate document embedded in $f" "$TMP/out"
        continue
    fi
    while read -r n line; do
        tokengate_check "$dir/$n.json" "$f:$line (embedded)"
    done <"$TMP/embedded.list"
    twin="$(twin_of "$f")"
    [[ -n $twin ]] || continue
    count="$(wc -l <"$TMP/embedded.list" | tr -d ' ')"
    if [[ $count != 1 ]]; then
        fail "$f should embed one tokengate document (the one in $twin), found $count"
    elif python3 -c 'import json, sys; sys.exit(json.load(open(sys.argv[1])) != json.load(open(sys.argv[2])))' \
        "$dir/1.json" "$twin"; then
        pass "$f embeds the same document as $twin"
    else
        fail "$f and $twin differ: keep the embedded document and $twin identical"
    fi
done

# --- 3: the demo configuration ---------------------------------------------------------
# shellcheck source=envoy/demo/render.sh
source "$ROOT/envoy/demo/render.sh"
if (LISTEN_PORT=8080 ADMIN_PORT=9901 UPSTREAM_PORT=8000 IDP_PORT=9000 demo_render "$TMP/demo") >"$TMP/out" 2>&1; then
    tokengate_check "$TMP/demo/tokengate.json" "envoy/demo (rendered tokengate.json)"
    envoy_validate "$TMP/demo/envoy.yaml" "envoy/demo/envoy.yaml.tmpl (rendered)"
else
    fail "envoy/demo/render.sh" "$TMP/out"
fi

# --- 4: the JSON Schema ----------------------------------------------------------------
SCHEMA=deploy/tokengate.schema.json
if ! "$TOKENGATE_CLI" schema >"$TMP/schema.json" 2>"$TMP/out"; then
    fail "tokengate schema" "$TMP/out"
elif cmp -s "$TMP/schema.json" "$SCHEMA"; then
    pass "$SCHEMA is the output of tokengate schema"
else
    diff -u "$SCHEMA" "$TMP/schema.json" >"$TMP/out" || true
    fail "$SCHEMA differs from tokengate schema; to fix: target/release/tokengate schema > $SCHEMA" "$TMP/out"
fi
if ! python3 -c 'import jsonschema' 2>/dev/null; then
    echo "skip  documents against $SCHEMA (no python3 jsonschema module: apt-get install python3-jsonschema)"
elif [[ ${#checked_docs[@]} -gt 0 ]]; then
    # One line per document: "ok" or the first error, with the path inside the document.
    python3 - "$TMP/schema.json" "${checked_docs[@]}" >"$TMP/schema.out" 2>&1 <<'PY' || true
import json, sys
import jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)
for path in sys.argv[2:]:
    errors = sorted(validator.iter_errors(json.load(open(path))), key=lambda e: list(e.absolute_path))
    if errors:
        where = ".".join(str(p) for p in errors[0].absolute_path) or "(document)"
        print(f"FAIL {where}: {errors[0].message[:300]}")
    else:
        print("ok")
PY
    mapfile -t results <"$TMP/schema.out"
    if [[ ${#results[@]} -ne ${#checked_docs[@]} ]]; then
        fail "schema validation (python3 jsonschema)" "$TMP/schema.out"
    else
        for i in "${!checked_docs[@]}"; do
            if [[ ${results[$i]} == ok ]]; then
                pass "valid under $SCHEMA: ${checked_labels[$i]}"
            else
                echo "${results[$i]}" >"$TMP/out"
                fail "valid under $SCHEMA: ${checked_labels[$i]}" "$TMP/out"
            fi
        done
    fi
fi

# --- 5: the demo, end to end -----------------------------------------------------------
if [[ ${SKIP_SMOKE:-0} == 1 ]]; then
    echo "skip  demo smoke (SKIP_SMOKE=1)"
elif [[ $FAILED != 0 ]]; then
    echo "skip  demo smoke (configuration checks failed)"
else
    read -r lp ap up ip < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
')
    echo "demo smoke: envoy/demo/run.sh with DEMO_SMOKE=1 (ports $lp, $ap, $up, IdP $ip)"
    if DEMO_SMOKE=1 LISTEN_PORT="$lp" ADMIN_PORT="$ap" UPSTREAM_PORT="$up" IDP_PORT="$ip" RUN_DIR="$TMP/smoke" \
        ENVOY="$ENVOY" timeout_cmd 180 "$ROOT/envoy/demo/run.sh" 2>&1 | sed 's/^/      /'; then
        pass "demo smoke (make run)"
    else
        fail "demo smoke (make run): see the output above"
    fi
fi

if [[ $FAILED != 0 ]]; then
    echo "validate: FAILED"
    exit 1
fi
echo "validate: all checks passed"
