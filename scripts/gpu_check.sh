#!/usr/bin/env bash
# The prepared GPU check: one command, <= 9 minutes on one H100/H200, everything into one folder.
#
#   scripts/gpu_check.sh OUT            # on a GPU machine (device tool: see below)
#   scripts/gpu_check.sh OUT --quick    # anywhere, tiny sizes on the CPU (CI's smoke runs this)
#   scripts/gpu_check.sh --prepare      # here, before the device call: MNIST into .gpu/data, sizes, the call
#
# 1. `seqbench bench` at the papers' shapes, train and infer: pMNIST B=100, T=784, H=N=512 for lstm
#    (cuDNN), hippo (dense and fast steps), enrnn, rhn, iss-lstm (the custom cells' fused loops run on
#    the CPU only: on CUDA they run eager, one warning line, and the bench's impl column says so); the
#    PTB large LM (2 x 1500, batch 20, bptt 35) as lstm and iss-lstm.
# 2. ISS on the GPU: batch-1 forward per token of the 1500,1500 LM against the paper's ISS result
#    373,315 (ms_per_step of the infer table).
# 3. A piece of `seqbench run --model hippo --task pmnist --preset paper` (50 epochs in all): it
#    resumes from the checkpoint committed in results/gpu/hippo-pmnist-paper/ (last.pt, best.pt,
#    run_id) when there is one, trains for what is left of the script's 9 minutes (SEQBENCH_GPU_MINUTES
#    caps it), and leaves its new checkpoint in OUT to be committed there for the next GPU session;
#    the record appears in OUT once the 50 epochs are done. Checkpoints are written at epoch ends
#    and a run always trains its first epoch, so the piece is skipped, saying why, when one epoch
#    (estimated from part 1's hippo training and inference steps at the same shapes: 540 training
#    batches and 60 validation batches of 100, a quarter more and 20 s to start) would not end
#    inside the 9 minutes.
# 4. (run before 3) A distributed run through torchrun with one process: `seqbench run` of lstm on
#    pMNIST (tiny) under `torch.distributed.run --nproc_per_node 1`, so NCCL, DDP and the rank-0 writes
#    run on the GPU (gloo with --quick); its record's `distributed` and test metrics go to the log.
#
# OUT gets at most 8 files, none over 16 MiB, no sub-folders: bench-pmnist-*.json, bench-ptb-*.json
# (two), last.pt, best.pt, run_id, gpu_check.log, and the run's record when it finished. (--quick
# benches a 20-step adding task instead of pMNIST: its bench file is bench-adding-*.json.)
#
# On the lent machine (Python 3.12 as python3, torch 2.11, no network): the MNIST files travel with
# the tree in the ignored folder .gpu/data (`scripts/gpu_check.sh --prepare` copies them there, checks
# the size of what travels and prints the call), and the command the device tool runs is
#   python3 -m pip install -q --no-deps --no-build-isolation -e . && SEQBENCH_DATA=.gpu/data PYTHON=python3 PYTHONUNBUFFERED=1 scripts/gpu_check.sh "$OUT"
# with carry [".gpu"] and timeout_s 560. --no-build-isolation: without a network pip cannot fetch
# setuptools into an isolated build environment (it fails before installing anything); the
# machine's own setuptools builds the editable install. Rehearsed on this CPU in a venv like that
# machine's (Python 3.12, torch 2.11.0, torchvision 0.26.0, no datasets or ray, pip --no-index).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
  # What travels to the lent machine: the tree git would send (tracked, and untracked but not
  # ignored) plus the carried .gpu folder, 64 MiB at most.
  SRC=${SEQBENCH_DATA:-../shared/data}/mnist
  [ -d "$SRC" ] || { echo "gpu_check: no MNIST folder at $SRC (set SEQBENCH_DATA)" >&2; exit 2; }
  mkdir -p .gpu/data && rm -rf .gpu/data/mnist && cp -r "$SRC" .gpu/data/ && chmod -R u+w .gpu
  tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
  gpu=$(du -sb .gpu | cut -f1)
  echo "travels: tree $((tree / 1048576)) MiB + .gpu $((gpu / 1048576)) MiB (limit 64 MiB)"
  [ $((tree + gpu)) -lt $((64 * 1048576)) ] || { echo "gpu_check: over 64 MiB" >&2; exit 2; }
  echo 'device run: command = python3 -m pip install -q --no-deps --no-build-isolation -e . && SEQBENCH_DATA=.gpu/data PYTHON=python3 PYTHONUNBUFFERED=1 scripts/gpu_check.sh "$OUT"'
  echo '            carry = [".gpu"], timeout_s = 560; then commit $OUT: bench-*.json to results/benchmarks/,'
  echo '            last.pt best.pt run_id to results/gpu/hippo-pmnist-paper/, a finished record to results/runs/'
  exit 0
fi
OUT=${1:?usage: scripts/gpu_check.sh OUT [--quick] | scripts/gpu_check.sh --prepare}
QUICK=${2:-}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
say() { echo "== $*" | tee -a "$LOG"; }
PY=${PYTHON:-python}
SB=("$PY" -m seqbench)  # the interpreter named, not whichever `seqbench` is first on PATH
start=$(date +%s)

if [ "$QUICK" = "--quick" ]; then
  # the same commands at tiny sizes; the sequence bench on a 20-step adding task instead of 784-step pMNIST
  DEV=cpu; H=16; B=4; BPTT=5; EMB=16; SIZES=16,16; PRUNED=4,3; ROUNDS=1; MRT=0.01; PRESET=tiny
  SEQ_TASK=(--task adding --set task.seq_len=20)
  RUN_PRESET=tiny; RUN_EXTRA=(--set limit_batches=2 --set latency_time=0.01); EPOCH_BATCHES=2; VAL_BATCHES=2
else
  DEV=cuda; H=512; B=100; BPTT=35; EMB=1500; SIZES=1500,1500; PRUNED=373,315; ROUNDS=3; MRT=1.0; PRESET=fast
  SEQ_TASK=(--task pmnist)
  RUN_PRESET=paper; RUN_EXTRA=(); EPOCH_BATCHES=540; VAL_BATCHES=60  # pMNIST: 54,000 train, 6,000 val
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee -a "$LOG"

say "1a. pMNIST shapes: B=$B, T=784, hidden = memory order = $H (train and infer); the custom cells' fused loops are CPU-only: on $DEV the impl column says what ran"
"${SB[@]}" bench "${SEQ_TASK[@]}" --models lstm,hippo+step=dense,hippo+step=fast,enrnn,rhn,iss-lstm --preset "$PRESET" \
  --set model.hidden=$H --batch-size $B --device $DEV --rounds $ROUNDS --min-run-time $MRT --out "$OUT" 2>&1 | tee -a "$LOG"

say "1b. PTB large LM: 2 layers of $EMB (batch 20, bptt $BPTT), lstm and iss-lstm"
"${SB[@]}" bench --task ptb --models "lstm+layers=2+hidden=$EMB,iss-lstm+sizes=$SIZES" --preset "$PRESET" \
  --set task.emb=$EMB --set task.bptt=$BPTT --batch-size 20 --device $DEV --rounds $ROUNDS --min-run-time $MRT \
  --out "$OUT" 2>&1 | tee -a "$LOG"

say "2. ISS on the GPU: batch-1 forward per token, $SIZES vs $PRUNED"
"${SB[@]}" bench --task ptb --models "iss-lstm+sizes=$SIZES,iss-lstm+sizes=$PRUNED" --preset "$PRESET" --mode infer \
  --set task.emb=$EMB --set task.bptt=$BPTT --batch-size 1 --device $DEV --rounds $ROUNDS --min-run-time $MRT \
  --out "$OUT" 2>&1 | tee -a "$LOG"

say "4. distributed: torchrun --nproc_per_node 1, lstm on pMNIST (tiny) on $DEV"
"$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m seqbench run --model lstm --task pmnist \
  --preset tiny --device $DEV --results "$WORK/ddp" --quiet 2>&1 | tee -a "$LOG"
"$PY" - "$WORK/ddp" <<'PY' 2>&1 | tee -a "$LOG"
import json, pathlib, sys
(rec,) = [json.loads(p.read_text()) for p in pathlib.Path(sys.argv[1], "runs").glob("*.json")]
print("4. record:", rec["status"], rec["distributed"], "test", rec["metrics"]["test"])
assert rec["status"] == "completed" and rec["distributed"]["backend"] in ("nccl", "gloo"), rec["distributed"]
PY

# 3. One epoch of the run must end inside the 9 minutes (540 s, less 30 s to copy the files out).
LEFT=$(( ${SEQBENCH_GPU_SECONDS:-540} - 30 - ( $(date +%s) - start ) ))
EST=$("$PY" - "$OUT" "${SEQ_TASK[1]}" "$B" "$EPOCH_BATCHES" "$VAL_BATCHES" <<'PY'
import json, pathlib, sys
out, task, b, n_train, n_val = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
bench = json.loads(max(pathlib.Path(out).glob(f"bench-{task}-*.json"), key=lambda p: p.stat().st_mtime).read_text())
ms = {(t["mode"], t["batch"]): r["median_ms"] for t in bench["tables"] for r in t["rows"] if r["contender"] == "hippo+step=dense"}
print(round(1.25 * (ms[("train", b)] * n_train + ms[("infer", b)] * n_val) / 1000 + 20))  # + a quarter, + 20 s start-up
PY
)
MINUTES=$("$PY" -c "import sys; left, cap = float(sys.argv[1]), sys.argv[2]; print(round(min(left / 60, float(cap) if cap else 1e9), 2))" "$LEFT" "${SEQBENCH_GPU_MINUTES:-}")
say "3. hippo on pMNIST, preset $RUN_PRESET: one epoch ~${EST} s (part 1's steps), ${LEFT} s left, up to $MINUTES minutes"
if [ "$EST" -ge "$LEFT" ]; then
  say "3. skipped: one epoch (~${EST} s) would not end in the ${LEFT} s left; no checkpoint written"
else
  CK=results/gpu/hippo-pmnist-$RUN_PRESET
  [ "$QUICK" = "--quick" ] && CK="$WORK/no-checkpoint"  # the quick check always starts afresh
  RES="$WORK/results"
  if [ -f "$CK/run_id" ] && [ -f "$CK/last.pt" ]; then
    ID=$(cat "$CK/run_id")
    mkdir -p "$RES/checkpoints/$ID"
    cp "$CK/last.pt" "$RES/checkpoints/$ID/"
    [ -f "$CK/best.pt" ] && cp "$CK/best.pt" "$RES/checkpoints/$ID/"
    "${SB[@]}" run --resume "$ID" --results "$RES" --stop-after-minutes "$MINUTES" --quiet 2>&1 | tee -a "$LOG"
  else
    "${SB[@]}" run --model hippo --task pmnist --preset $RUN_PRESET --device $DEV --results "$RES" \
      --stop-after-minutes "$MINUTES" --quiet "${RUN_EXTRA[@]}" 2>&1 | tee -a "$LOG"
    ID=$(ls "$RES/checkpoints")
  fi
  echo "$ID" > "$OUT/run_id"
  for f in last.pt best.pt; do
    [ -f "$RES/checkpoints/$ID/$f" ] && cp "$RES/checkpoints/$ID/$f" "$OUT/"
  done
  [ -f "$RES/runs/$ID.json" ] && cp "$RES/runs/$ID.json" "$OUT/"
fi
say "done in $(( $(date +%s) - start )) s; $(ls "$OUT" | wc -l) files in $OUT"
ls -la "$OUT" | tee -a "$LOG"
