#!/usr/bin/env python3
"""Writes the seed corpus of aqua_fuzz_cli under corpus/cli/: every row of the tools' bad-input
table (tests/tools/bad_input_cases.txt) and the tools' documented invocations, as argument vectors
(first byte: the tool, fuzz_cli.cpp's order; then the arguments separated by NUL bytes). The output
is committed; this documents how it was made. Run from anywhere."""
import os, shlex

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOOLS = ["aqua_decode", "aqua_compare", "aqua_llama", "aqua_calibrate", "aqua_make_synthetic_dump",
         "aqua_cost", "aqua_perf_report", "aqua_quickstart", "aqua_llama_policies"]
PLACEHOLDERS = {"@WORK@": "/tmp", "@SRC@": ".", "@DATA@": "../shared/data", "@MANY_THREADS@": "9",
                "@CASES@": "tests/tools/bad_input_cases.txt"}
VALID = [
    ("aqua_decode", "--n 512 --steps 32 --interval 16 --hq 8 --hkv 2 --d 64 --k 32 --budget 128 --json"),
    ("aqua_decode", "--n 256 --hq 8 --hkv 2 --d 64 --sweep-rank --json"),
    ("aqua_decode", "--n 32768 --steps 224 --interval 32 --k 64 --budget-fraction 0.2 --select tile --clock cpu"),
    ("aqua_compare", "--n 256 --k 16,48 --select tile,group --reps 2 --hq 4 --hkv 2 --d 64 --tile 16 --clock cpu "
                     "--basis random --json"),
    ("aqua_compare", "--sweep-break-even --k 48,16 --sweep-n 32:256 --reps 3 --hq 4 --hkv 2 --d 64 --tile 16"),
    ("aqua_compare", "--mode prefill --n 4096 --m 4096 --k 32 --select per-head,tile --clock cpu --reps 5 "
                     "--probe-bytes 16M --isa avx2"),
    ("aqua_compare", "--n 32768 --k 64 --select group,tile,per-head --budget 6553 --reps 15 --baseline plain"),
    # --projection must name a readable file (only that is checked while parsing): the table again.
    ("aqua_llama", "--ppl text/en_pud.txt --lines 501-1000 --projection tests/tools/bad_input_cases.txt --k 4 "
                   "--r 6"),
    ("aqua_llama_policies", "--ppl text/en_pud.txt --lines 1-500 --windows 0 --fit-policy /tmp/p.policy "
                            "--basis joint --alloc dp --rule energy-head --budget 4 --weight key-rms"),
    ("aqua_llama", "--prompt 'Once upon a time' --steps 60 --json --identity --energy 0.9 --select tile --tile 2"),
    ("aqua_calibrate", "--dumps /tmp --out /tmp/x.safetensors --source queries_and_keys --center --json "
                       "--threads 2 --max-queries 0 --max-keys 16 --model m --eval /tmp"),
    ("aqua_make_synthetic_dump", "/tmp/d --layers 1 --query-heads 4 --kv-heads 2 --rows 64 --d 16 --rank 4 --seed 3"),
    ("aqua_cost", "--d 128 --k 32 --n 32768 --hq 32 --hkv 8 --group-shared --plot /tmp/c.svg --per-new-key "
                  "--selection-flops topk --union-spread 0.5 --budget 100 --no-values --json"),
    ("aqua_perf_report", "--table tests/tools/bad_input_cases.txt --sweep tests/tools/bad_input_cases.txt "
                         "--markdown /tmp/r.md --plot /tmp/s.svg"),
    ("aqua_quickstart", "--hq 8 --hkv 2 --d 64 --n 1024 --threads 2"),
    # --policy must name a readable file: the table stands in for a fitted policy.
    ("aqua_llama_policies", "--ppl text/en_pud.txt --lines 501-1000 --policy tests/tools/bad_input_cases.txt "
                            "--block 1 --max-tokens 256 --json"),
    ("aqua_llama_policies", "--model tests/fuzz/corpus/checkpoint/valid_shared "
                            "--tokenizer tests/fuzz/corpus/tokenizer/valid_3 --data-dir /tmp --ppl text/kjv.txt "
                            "--windows 4 --fit-policy /tmp/p.policy --budget 2.5 --alloc lagrange "
                            "--rule energy-head --basis joint-centered --weight key-std"),
    # Flags added since the list above (appended, so the seeds above keep their names): aqua_compare
    # --shards, --mode views with its engine-buffer options, the storage types and --prefetch;
    # aqua_quickstart --k; aqua_llama's H2O flags and explicit model files; the rest of the decode
    # loop's and the cost model's knobs; aqua_calibrate evaluating an existing projection (the
    # table stands in for the projection file, as for --policy: only its readability is checked).
    ("aqua_compare", "--n 4096,8192 --k 32,64 --select tile --shards 1,2,4 --reps 3 --spectrum 16 --threads 2"),
    ("aqua_compare", "--mode views --n 2048 --k 32 --layout head-major --engine-pages 4k --kv-type bf16 "
                     "--prefetch l1 --reps 2"),
    ("aqua_compare", "--n 2048 --k 32 --key-type f16 --value-type bf16 --prefetch l2 --isa portable"),
    ("aqua_quickstart", "--hq 8 --hkv 2 --d 64 --n 1024 --k 16"),
    ("aqua_llama", "--model tests/fuzz/corpus/checkpoint/valid_shared --tokenizer tests/fuzz/corpus/tokenizer/valid_3 "
                   "--data-dir /tmp --ppl text/kjv.txt --windows 2 --max-tokens 2 --block 1 --threads 2 "
                   "--identity --k 1 --h2o-budget 2 --h2o-recent 1"),
    ("aqua_llama", "--ppl text/en_pud.txt --lines 1-20 --max-tokens 64 --dump-qk /tmp/qk"),
    ("aqua_decode", "--n 1024 --steps 16 --interval 8 --warmup 4 --hq 8 --hkv 2 --d 64 --rank 32 --tile 16 --k 16 "
                    "--budget 256 --recent 32 --slack 16 --amplitude 2 --query-noise 0.1 --spectrum 8 --seed 5 "
                    "--threads 2"),
    ("aqua_cost", "--d 64 --r 32 --k 16 --tile 8 --n 1e6 --amortised --elem-bytes 2 --proj-bytes 0"),
    ("aqua_cost", "--d 64 --k 8 --per-query --elem-bytes 2 --proj-bytes 2"),
    ("aqua_calibrate", "--projection tests/tools/bad_input_cases.txt --eval /tmp --json"),
    # aqua_compare's batched decode and model features.
    ("aqua_compare", "--n 2048 --batch 16 --k 32 --select group,tile --reps 3 --threads 2 --window 512"),
    ("aqua_compare", "--n 4096 --k 32,96 --select per-head --softcap 50 --window 1000 --kv-type f16"),
]

def put(name, tool, args):
    data = bytes([TOOLS.index(tool)]) + b"\0".join(a.encode() for a in args)
    os.makedirs(os.path.join(HERE, "corpus", "cli"), exist_ok=True)
    with open(os.path.join(HERE, "corpus", "cli", name), "wb") as f:
        f.write(data)

count = {}
with open(os.path.join(ROOT, "tests", "tools", "bad_input_cases.txt")) as table:
    for row in table:
        if not row.strip() or row.lstrip().startswith("#"):
            continue
        tool, _, _, args = [x.strip() for x in row.split("|", 3)]
        for k, v in PLACEHOLDERS.items():
            args = args.replace(k, v)
        count[tool] = count.get(tool, 0) + 1
        put("bad_%s_%03d" % (tool[5:], count[tool]), tool, shlex.split(args))
for i, (tool, args) in enumerate(VALID):
    put("valid_%s_%02d" % (tool[5:], i), tool, shlex.split(args))
