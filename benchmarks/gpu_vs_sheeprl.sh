#!/usr/bin/env bash
# Our DreamerV3 gradient step against sheeprl's on a lent GPU machine (issue 24): sheeprl's wheels are prepared
# here, carried there (no network there), installed offline, then benchmarks/gpu_vs_sheeprl.py runs.
#
# usage:
#   bash benchmarks/gpu_vs_sheeprl.sh --prepare [DIR] [--with-dmc]   # here: wheels into DIR (default .whl/sheeprl)
#   bash benchmarks/gpu_vs_sheeprl.sh --run [DIR] [-- ARGS...]       # there: install from DIR, run the benchmark
#
# --prepare resolves sheeprl==0.8.4 with pip (a dry run), keeps what the device image lacks and downloads it for
# CPython 3.12 on manylinux x86-64 (the image's python3 is 3.12). Left out: what the image has (the 'Python packages
# already there' of /work/.library/device/KINDS.md, the list below when that file is absent), torch, nvidia-*,
# cuda-*, triton, and what sheeprl's DreamerV3 step never imports: opencv-python (the image's
# opencv-python-headless gives cv2), pygame-ce (gymnasium's classic-control rendering), moviepy and its
# imageio-ffmpeg, proglog and decorator (video capture). A package with no wheel is built into one here (pure Python
# only: antlr4-python3-runtime 4.9.3, hydra's parser, has none). --with-dmc adds dm-control 1.0.50 and MuJoCo 3.17.0
# for `-- --sheeprl-env dmc` (rendering there also needs EGL's loaders: see the device README). It prints every
# wheel's size, the total, and whether DIR and the working tree together fit the 64 MiB that a call may carry.
#
# --run (on the device, in the repository's root): makes a venv (GVS_VENV, default /tmp/gvs-venv) with
# --system-site-packages over the image's python3 and a .pth that adds python3's own site-packages (python3 there is
# itself a venv, /opt/torch/.venv, whose packages --system-site-packages alone would not reach), installs DIR's wheels
# with `pip install --no-index --find-links DIR --no-deps` (--no-deps: the image's opencv-python-headless stands for
# opencv-python) and this package with `--no-deps --no-build-isolation -e .`, then runs
# benchmarks/gpu_vs_sheeprl.py with --out $OUT and the ARGS after `--`. A venv left by an earlier call on the same warm
# machine is reused, and so is inductor's cache (/tmp/gvs_inductor_cache). Rehearsed on a CPU machine with
# GVS_PYTHON=.venv/bin/python (torch, no sheeprl) and GVS_EXTRA_SITE=<a sheeprl venv's site-packages> standing for the
# image's lightning, torchmetrics, tensorboard, ... (the .pth files put them after the venv's own wheels).
#
# The device call (the `run` tool), after `bash benchmarks/gpu_vs_sheeprl.sh --prepare` here:
#   run(command="bash benchmarks/gpu_vs_sheeprl.sh --run .whl/sheeprl -- --budget-s 540",
#       carry=[".whl/sheeprl"], timeout_s=590)
# (.whl/ is ignored by .gitignore, so it travels only because carry names it.) The eager rows come first, then the
# compiled ones, compiled side by side (up to 330 s) and timed one at a time until the budget ends; rows left over
# say so. For them, within 30 s (the machine stays warm that long; its venv, inductor's cache and the first call's
# results in /tmp/gvs_state.json are still there), with the device time left (about 3 minutes):
#   run(command="bash benchmarks/gpu_vs_sheeprl.sh --run .whl/sheeprl -- --resume --budget-s 150",
#       carry=[".whl/sheeprl"], timeout_s=180)
# Then give_back. The JSON, the log and the printed table come back under files_at.
set -euo pipefail
cd "$(dirname "$0")/.."

# The device image's Python packages (KINDS.md, 'Python packages already there', read 2026-11-17).
IMAGE_PACKAGES="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp"
#: What sheeprl's DreamerV3 step never imports (see above).
NOT_NEEDED="opencv-python pygame-ce pygame moviepy imageio-ffmpeg proglog decorator"
KINDS=/work/.library/device/KINDS.md
CARRY_LIMIT=$((64 * 1024 * 1024))

prepare() {
  local dir=${1:-.whl/sheeprl} dmc=${2:-}
  local py=${PYTHON:-}
  [ -n "$py" ] || { [ -x .venv/bin/python ] && py=.venv/bin/python || py=python3; }
  local tmp
  tmp=$(mktemp -d)
  mkdir -p "$dir"
  rm -f "$dir"/*.whl
  local wanted=("sheeprl==0.8.4")
  [ -z "$dmc" ] || wanted+=("dm-control==1.0.50" "mujoco==3.17.0")
  echo "resolving ${wanted[*]} (pip dry run) ..."
  "$py" -m pip install --dry-run --ignore-installed --quiet --report "$tmp/report.json" "${wanted[@]}" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  local image=$IMAGE_PACKAGES
  if [ -f "$KINDS" ]; then  # the newest list, when this workplace's notes are at hand
    image=$(awk '/^## Python packages already there/{f=1} f && /^Packages:/{sub(/^Packages: */, ""); sub(/\.$/, "");
      print; exit}' "$KINDS" | tr ',' ' ')
    [ -n "$image" ] || image=$IMAGE_PACKAGES
  fi
  IMAGE="$image" NOT_NEEDED="$NOT_NEEDED" "$py" - "$tmp/report.json" > "$tmp/needed.txt" <<'PY'
import json, os, re, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
image = {norm(name) for name in os.environ["IMAGE"].split()}
not_needed = {norm(name) for name in os.environ["NOT_NEEDED"].split()}
skipped = {"on the image": [], "torch/CUDA": [], "not imported by the step": []}
for item in json.load(open(sys.argv[1]))["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    key = norm(name)
    if key in not_needed:
        skipped["not imported by the step"].append(f"{name} {version}")
    elif key == "torch" or key == "triton" or key.startswith(("nvidia-", "cuda-")):
        skipped["torch/CUDA"].append(f"{name} {version}")
    elif key in image:
        skipped["on the image"].append(f"{name} {version}")
    else:
        print(f"{name}=={version}")
for why, names in skipped.items():
    print(f"left out ({why}): {', '.join(names) or 'none'}", file=sys.stderr)
PY
  local platforms=()
  for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
  platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  while read -r requirement; do
    [ -n "$requirement" ] || continue
    if ! "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$dir" "$requirement" 2>/dev/null; then
      echo "no wheel for $requirement: building one here (pure Python only)"
      mkdir -p "$tmp/sdist"
      "$py" -m pip download -q --no-deps --no-binary=:all: -d "$tmp/sdist" "$requirement"
      "$py" -m pip wheel -q --no-deps --no-build-isolation -w "$dir" "$tmp/sdist"/*
      rm -rf "$tmp/sdist"
    fi
  done < "$tmp/needed.txt"
  for wheel in "$dir"/*.whl; do
    case "$wheel" in
      *-none-any.whl | *cp312*manylinux* | *abi3*manylinux* | *py3-none-manylinux*) ;;
      *) echo "WARNING: $wheel may not install on CPython 3.12 x86-64" >&2 ;;
    esac
  done
  echo
  echo "wheels in $dir:"
  (cd "$dir" && du -b -- *.whl | sort -n | awk '{printf "  %8.2f MiB  %s\n", $1 / 1048576, $2}')
  local wheels tree
  wheels=$(du -cb "$dir"/*.whl | tail -1 | cut -f1)
  tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | awk '$2 == "total" {s += $1} END {print s}')
  awk -v w="$wheels" -v t="$tree" -v limit="$CARRY_LIMIT" 'BEGIN {
    printf "wheels: %.2f MiB; the working tree that travels: %.2f MiB; together %.2f MiB of the %.0f MiB a call carries: %s\n",
      w / 1048576, t / 1048576, (w + t) / 1048576, limit / 1048576, (w + t <= limit ? "fits" : "DOES NOT FIT (the biggest wheels are listed last above)")
  }'
  rm -rf "$tmp"
}

run() {
  local dir=${1:-.whl/sheeprl}
  shift || true
  [ "${1:-}" != "--" ] || shift
  local venv=${GVS_VENV:-/tmp/gvs-venv} parent=${GVS_PYTHON:-python3}
  local out=${OUT:-/tmp/gvs-out}
  mkdir -p "$out"
  if ! "$venv/bin/python" -c "import sheeprl, hydra, gymnasium, latent_residual" 2>/dev/null; then
    ls "$dir"/*.whl > /dev/null || { echo "no wheels in $dir: run --prepare here first, carry $dir" >&2; exit 1; }
    rm -rf "$venv"
    "$parent" -m venv --without-pip --system-site-packages "$venv"
    local site
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$parent" -c 'import site; print("import site; " + "; ".join(f"site.addsitedir({p!r})" for p in site.getsitepackages()))' \
      > "$site/_gvs_parent.pth"
    # A rehearsal elsewhere: GVS_EXTRA_SITE names site-packages that stand for the image's other packages.
    [ -z "${GVS_EXTRA_SITE:-}" ] || echo "import site; site.addsitedir('$GVS_EXTRA_SITE')" > "$site/_gvs_extra.pth"
    "$venv/bin/python" -m pip install -q --no-index --find-links "$dir" --no-deps --no-compile "$dir"/*.whl
    "$venv/bin/python" -m pip install -q --no-index --no-deps --no-build-isolation -e .
  fi
  "$venv/bin/python" - <<'PY'
import platform, torch, sheeprl, hydra, gymnasium
cuda = torch.cuda.is_available()
print(f"python {platform.python_version()}; torch {torch.__version__} (CUDA {torch.version.cuda}, available: {cuda}"
      f"{', ' + torch.cuda.get_device_name() if cuda else ''}); sheeprl {sheeprl.__version__}; hydra {hydra.__version__}; "
      f"gymnasium {gymnasium.__version__}", flush=True)
PY
  "$venv/bin/python" benchmarks/gpu_vs_sheeprl.py --out "$out" --sheeprl-python "$venv/bin/python" "$@" \
    2>&1 | tee -a "$out/gpu_vs_sheeprl.txt"
}

main() {
  case "${1:-}" in
    --prepare)
      shift
      local dir=.whl/sheeprl dmc=
      for arg in "$@"; do
        case "$arg" in --with-dmc) dmc=1 ;; *) dir=$arg ;; esac
      done
      prepare "$dir" "$dmc"
      ;;
    --run)
      shift
      local dir=.whl/sheeprl
      if [ $# -gt 0 ] && [ "$1" != "--" ]; then dir=$1; shift; fi
      run "$dir" "$@"
      ;;
    *)
      sed -n '2,7p' "$0" >&2
      exit 2
      ;;
  esac
}

# On one line, so that bash has read the whole file before it runs: an edit of this file during a run changes nothing.
main "$@"; exit
