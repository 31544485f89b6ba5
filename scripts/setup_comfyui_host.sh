#!/usr/bin/env bash
# Set up a real ComfyUI outside this repository as a test host for the integration tests
# (tests/host). Reproducible and idempotent: a second run with nothing changed does almost nothing.
#
#   scripts/setup_comfyui_host.sh [--source DIR] [--dest DIR] [--ref REV] [--no-verify]
#
#   --source DIR  a ComfyUI git directory (bare, e.g. a fetched snapshot) or an existing checkout.
#                 Default: $COMFYUI_SOURCE, else /work/.mirror/Comfy-Org+ComfyUI/repo.
#                 An existing checkout given without --dest is used in place (only the venv is made).
#   --dest DIR    where the checkout goes. Default: $COMFYUI_ROOT, else /work/comfyui.
#                 Must lie outside this repository: no ComfyUI code is ever copied into it.
#   --ref REV     commit or tag to check out (default: the source's HEAD), e.g. 63722199 for v0.3.64.
#   --no-verify   skip starting the server once to check that /object_info answers.
#   --checkout-only  stop after the checkout (no venv, no verify).
#   --if-available   exit 0 (printing nothing on stdout) when the source does not exist, so CI can call
#                    this unconditionally; the host tests then skip for want of COMFYUI_ROOT.
#
# Environment: COMFYUI_TORCH_SPEC (default "torch==2.14.1 torchvision==0.29.1"), PYTHON (default python3).
# Files whose objects are missing from the source (a partial snapshot) are left out of the
# checkout through a sparse-checkout pattern, so the checkout still succeeds.
# On success the last line printed is:  export COMFYUI_ROOT=<dest>
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd -P)"

source_dir="${COMFYUI_SOURCE:-/work/.mirror/Comfy-Org+ComfyUI/repo}"
dest_dir="${COMFYUI_ROOT:-/work/comfyui}"
dest_given=0
[[ -n "${COMFYUI_ROOT:-}" ]] && dest_given=1
ref=""
verify=1
checkout_only=0
if_available=0
python_bin="${PYTHON:-python3}"
torch_spec="${COMFYUI_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
pack_runtime_deps=(requests safetensors einops kornia opencv-python-headless av tqdm)

die() { echo "setup_comfyui_host: $*" >&2; exit 1; }
log() { echo "setup_comfyui_host: $*" >&2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --source) source_dir="${2:?--source needs a directory}"; shift 2 ;;
    --dest) dest_dir="${2:?--dest needs a directory}"; dest_given=1; shift 2 ;;
    --ref) ref="${2:?--ref needs a commit or tag}"; shift 2 ;;
    --no-verify) verify=0; shift ;;
    --checkout-only) checkout_only=1; shift ;;
    --if-available) if_available=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (expected --source, --dest, --ref, --no-verify)" ;;
  esac
done

if [[ ! -d "$source_dir" && $if_available -eq 1 ]]; then
  log "no ComfyUI source at '$source_dir'; nothing to set up"
  exit 0
fi
[[ -d "$source_dir" ]] || die "source '$source_dir' is not a directory (expected a ComfyUI git dir or checkout)"
source_dir="$(cd "$source_dir" && pwd -P)"

is_checkout() { [[ -f "$1/main.py" && -f "$1/comfyui_version.py" ]]; }
is_bare_git() { [[ -f "$1/HEAD" && -d "$1/objects" && -d "$1/refs" ]]; }

# An existing checkout without an explicit --dest is used where it is.
if is_checkout "$source_dir" && [[ $dest_given -eq 0 ]]; then
  dest_dir="$source_dir"
fi

dest_dir="$(realpath -m "$dest_dir")"
case "$dest_dir/" in
  "$repo_root"/*) die "destination '$dest_dir' lies inside this repository ($repo_root); choose a folder outside it" ;;
esac
mkdir -p "$dest_dir"

# --- 1. checkout -----------------------------------------------------------------------------
sparse_checkout_without_missing_blobs() {
  # $1: work tree that has a git dir and a no-checkout clone; $2: revision
  local tree="$1" rev="$2" missing
  missing="$(git -C "$tree" ls-tree -r "$rev" \
    | awk '$2 == "blob" { print $3 " " $4 }' \
    | while read -r sha path; do
        git -C "$tree" cat-file -e "$sha" 2>/dev/null || printf '%s\n' "$path"
      done)"
  local patterns=('/*')
  if [[ -n "$missing" ]]; then
    while IFS= read -r path; do
      log "left out of the checkout (object missing from source): $path"
      patterns+=("!/$path")
    done <<< "$missing"
  fi
  git -C "$tree" sparse-checkout set --no-cone "${patterns[@]}"
  # git may print "invalid object" for the left-out paths while writing the index; the
  # checkout itself succeeds, which the main.py check below confirms.
  git -C "$tree" checkout -q --detach "$rev" 2>/dev/null || true
  is_checkout "$tree" || die "checkout of '$rev' into '$tree' failed"
}

if [[ "$dest_dir" != "$source_dir" ]]; then
  if is_checkout "$dest_dir" && git -C "$dest_dir" rev-parse -q --verify HEAD >/dev/null 2>&1; then
    if [[ -n "$ref" ]]; then
      git -C "$dest_dir" rev-parse -q --verify "$ref^{commit}" >/dev/null 2>&1 \
        || git -C "$dest_dir" fetch -q --tags origin 2>/dev/null || true
      want="$(git -C "$dest_dir" rev-parse -q --verify "$ref^{commit}")" \
        || die "revision '$ref' not found in '$dest_dir' or its origin"
      if [[ "$(git -C "$dest_dir" rev-parse HEAD)" != "$want" ]]; then
        sparse_checkout_without_missing_blobs "$dest_dir" "$want"
      fi
    fi
    log "checkout already present at $dest_dir"
  else
    [[ -z "$(ls -A "$dest_dir" 2>/dev/null | grep -v '^\.venv$' || true)" ]] \
      || die "destination '$dest_dir' is not empty and holds no ComfyUI checkout"
    if is_bare_git "$source_dir" || git -C "$source_dir" rev-parse --git-dir >/dev/null 2>&1; then
      log "cloning $source_dir -> $dest_dir"
      git clone -q --no-checkout "$source_dir" "$dest_dir/.clone-tmp"
      # move the clone's .git into place (dest may already hold a .venv)
      mv "$dest_dir/.clone-tmp/.git" "$dest_dir/.git"
      rmdir "$dest_dir/.clone-tmp"
      sparse_checkout_without_missing_blobs "$dest_dir" "${ref:-HEAD}"
    else
      die "source '$source_dir' is neither a git directory nor a ComfyUI checkout"
    fi
  fi
fi

version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$dest_dir/comfyui_version.py")"
log "ComfyUI $version at $dest_dir ($(git -C "$dest_dir" log -1 --format='%h %cs' 2>/dev/null || echo 'no git'))"

if [[ $checkout_only -eq 1 ]]; then
  echo "export COMFYUI_ROOT=$dest_dir"
  exit 0
fi

# --- 2. venv ---------------------------------------------------------------------------------
venv="$dest_dir/.venv"
py="$venv/bin/python"
requirements_no_torch="$(grep -v -E '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*$' "$dest_dir/requirements.txt")"
stamp_want="$(printf '%s\n%s\n%s\n' "$torch_spec" "$requirements_no_torch" "${pack_runtime_deps[*]}" | sha256sum | cut -d' ' -f1)"
stamp_file="$venv/.host-deps-stamp"

if [[ -x "$py" && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp_want" ]]; then
  log "venv up to date at $venv"
else
  [[ -x "$py" ]] || "$python_bin" -m venv "$venv"
  log "installing $torch_spec into $venv (large; takes a while)"
  # shellcheck disable=SC2086
  nice -n 10 "$py" -m pip install -q $torch_spec
  req_file="$(mktemp)"
  printf '%s\n' "$requirements_no_torch" > "$req_file"
  log "installing ComfyUI requirements (without torch) and the pack's runtime deps"
  nice -n 10 "$py" -m pip install -q -r "$req_file" "${pack_runtime_deps[@]}"
  rm -f "$req_file"
  printf '%s\n' "$stamp_want" > "$stamp_file.tmp" && mv "$stamp_file.tmp" "$stamp_file"
fi

# --- 3. verify -------------------------------------------------------------------------------
if [[ $verify -eq 1 ]]; then
  port="$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  scratch="$(mktemp -d)"
  log "verifying: main.py --cpu on 127.0.0.1:$port"
  (cd "$dest_dir" && exec nice -n 10 "$py" main.py --cpu --listen 127.0.0.1 --port "$port" \
      --disable-all-custom-nodes --output-directory "$scratch/out" --input-directory "$scratch/in" \
      --temp-directory "$scratch/tmp" >"$scratch/server.log" 2>&1) &
  server_pid=$!
  ok=0
  for _ in $(seq 1 180); do
    if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
    if "$py" - "$port" <<'EOF' 2>/dev/null; then ok=1; break; fi
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/object_info", timeout=5) as r:
    sys.exit(0 if "SaveImage" in json.load(r) else 1)
EOF
    sleep 1
  done
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  if [[ $ok -ne 1 ]]; then
    tail -n 40 "$scratch/server.log" >&2
    die "ComfyUI did not answer /object_info within 180 s (log above)"
  fi
  rm -rf "$scratch"
  log "verified: /object_info answered"
fi

echo "export COMFYUI_ROOT=$dest_dir"
