# The training path on a GPU machine with no network, in one call (docs/training.md, "On a GPU").
#
#   bash scripts/device_check.sh prepare   # here: wheels the GPU image lacks (.whl/) and a copy of the
#                                          # quality benchmark's VLM, two tasks and test pixels (.gpu/)
#   bash scripts/device_check.sh           # there, carrying .whl and .gpu; logs go to $OUT (or /tmp/out)
#
# There: training throughput of ViT-B-32/16 under bf16 autocast, the training and export tests on CUDA
# (their device is `auto`), and three benchmark jobs of the default beside the CPU's results.
set -u
if [ "${1:-}" = prepare ]; then
    set -e
    rm -rf .whl .gpu && mkdir -p .gpu/cache
    for p in open_clip_torch ftfy wcwidth platformdirs defusedxml; do
        version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$p'))")
        .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d .whl "$p==$version"
    done
    key=$(.venv/bin/python -c "from bench.quality.pretrain_vlm import PretrainConfig; print(PretrainConfig().key())")
    cache=.cache/quality
    mkdir -p .gpu/cache/vlm-$key && cp $cache/vlm-$key/vlm.pt .gpu/cache/vlm-$key/
    for task in objects hier; do
        tkey=$(.venv/bin/python -c "from bench.quality.run_all import TASKS; print({s.name: s.config.key() for s in TASKS}['$task'])")
        mkdir -p .gpu/cache/task-$tkey .gpu/cache/results-$key/$task
        cp -r $cache/task-$tkey/{task.json,mytags.txt,lt,lt.csv,shot1-s0,shot1-s0.csv} .gpu/cache/task-$tkey/
        cp $cache/results-$key/$task/test-pixels-*.npy .gpu/cache/results-$key/$task/
    done
    grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo /.gpu/ >> .git/info/exclude
    du -sh .whl .gpu
    exit 0
fi

OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, open_clip, onnxruntime as o; print('torch', torch.__version__, 'open_clip', open_clip.__version__, 'ort', o.__version__)"
step() {  # LIMIT NAME COMMAND...: its log in $OUT/NAME.log, its tail here
    local limit=$1 name=$2; shift 2; local started=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "=== $name: rc $? in $((SECONDS - started)) s (limit $limit s)"; tail -n 30 "$OUT/$name.log"
}
step 170 throughput python3 bench/train_throughput.py --photos 512 --size 1024 768 --backbones tiny,ViT-B-32,ViT-B-16 \
    --batch-size 64 --epochs 3 --workers 8 --device cuda
step 170 tests python3 -m pytest -q -p no:cacheprovider --timeout 120 tests/test_train_e2e.py \
    tests/test_train_small_data.py tests/test_train_model.py tests/test_train_q2l.py tests/test_export_checks.py
step 170 quality python3 -m bench.quality.one_job --cache .gpu/cache --out /tmp/quality \
    objects:long-tailed:default:0 objects:1-shot:default:0 hier:long-tailed:default:0
