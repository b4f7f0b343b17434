"""Benchmark: convert the full-size RemBERT checkpoint and compare with the I/O floor and with Hugging Face.

One run measures, side by side, each repeated `--repeats` times (medians reported):
- the floor: `cat` of the source data from a warm page cache, plus `dd` writing as many bytes as the output
  (both buffered and O_DIRECT; the floor takes the faster, so it is the stricter bound);
- `convert-rembert` to each format and dtype, in subprocesses: wall, CPU, peak RSS, bytes read/written
  (/proc/<pid>/io rchar/wchar, read before the child is reaped);
- when full-slots/ exists, the same conversion of the 12 GB checkpoint with Adam slots (it must cost no more
  than the 4 GB one beyond parsing its bigger index);
- the official Hugging Face path (`RemBertConfig.from_json_file`, `RemBertModel(config)`,
  `load_tf_weights_in_rembert`, `torch.save`), when `transformers<5` is importable.

Targets, each printed PASS or FAIL: safetensors float32 within 1.5x the floor and at most 1 GB of peak RSS;
float16 at most 1.2x the float32 conversion of the same run (wall, medians); float16 and bfloat16 within 1.5x
the half-size floor; every format and dtype at most 1 GB of RSS; 5x faster than Hugging Face (unless --no-hf).

Make the checkpoints first (outside the repo; ~16 GB of disk, 4 GB without the slots one):

    .venv/bin/python benchmarks/make_full_checkpoint.py ../bench-data/full
    .venv/bin/python benchmarks/make_full_checkpoint.py ../bench-data/full-slots --slots
    .venv/bin/python benchmarks/bench_convert.py --data ../bench-data --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = Path(sys.executable)
CLI = PYTHON.parent / "convert-rembert"
RSS_LIMIT = 1 << 30
FLOOR_RATIO_TARGET, HF_SPEEDUP_TARGET, FLOAT16_OVER_FLOAT32_TARGET = 1.5, 5.0, 1.2

HF_SCRIPT = """
import sys
import tensorflow  # load_tf_weights_in_rembert reads the checkpoint through TensorFlow
import torch
from transformers import RemBertConfig, RemBertModel, load_tf_weights_in_rembert

checkpoint, config_file, output = sys.argv[1:]
config = RemBertConfig.from_json_file(config_file)
model = RemBertModel(config)
load_tf_weights_in_rembert(model, config, checkpoint)
torch.save(model.state_dict(), output)
"""


@dataclass
class Run:
    name: str
    wall: float
    cpu: float
    rss: int  # bytes
    read: int  # rchar: bytes through read syscalls (page cache or disk)
    written: int  # wchar
    output: int  # bytes of the files produced


def measure(name: str, command: list[str], output: Path | None = None, stdout: Path | None = None) -> Run:
    """Run `command` and measure it. /proc/<pid>/io is read after it exits but before it is reaped."""
    log = open(os.devnull, "w") if stdout is None else open(stdout, "w")  # noqa: SIM115
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=errors)
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        wall = time.perf_counter() - started
        io = dict(line.split(": ") for line in Path(f"/proc/{process.pid}/io").read_text().splitlines())
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        log.close()
        if process.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"{name} failed ({process.returncode}): {' '.join(command)}\n"
                             f"{errors.read().decode(errors='replace')[-3000:]}")
    size = 0
    if output is not None and output.exists():
        size = sum(p.stat().st_size for p in output.rglob("*") if p.is_file()) if output.is_dir() \
            else output.stat().st_size
    return Run(name, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, int(io["rchar"]),
               int(io["wchar"]), size)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def data_file(checkpoint: Path) -> Path:
    (path,) = checkpoint.glob("*.data-00000-of-00001")
    return path


def warm(checkpoint: Path) -> None:
    """Bring the model tensors (not the Adam slots) of a checkpoint into the page cache: the comparison is
    between warm caches, and the other runs' 4 GB of output may have pushed some of them out."""
    sys.path.insert(0, str(REPO))
    from converters.tf1_checkpoint import CheckpointReader

    with CheckpointReader(checkpoint) as reader:
        for name in reader.entries:
            if "adam" not in name:
                for _ in reader.iter_rows(name):
                    pass


def hf_available() -> str | None:
    probe = subprocess.run([str(PYTHON), "-c", "import transformers; print(transformers.__version__)"],
                           capture_output=True, text=True)
    version = probe.stdout.strip()
    return version if probe.returncode == 0 and int(version.split(".")[0]) < 5 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../bench-data"),
                        help="holds full/ (and optionally full-slots/) from make_full_checkpoint.py; "
                             "outputs go here too")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-hf", action="store_true", help="skip the Hugging Face path")
    parser.add_argument("--json", type=Path, help="also write every run here")
    args = parser.parse_args()
    full, slots = args.data / "full", args.data / "full-slots"
    if not (full / "bert_config.json").is_file():
        sys.exit(f"error: no checkpoint in {full}; make it with benchmarks/make_full_checkpoint.py {full}")
    if not (slots / "bert_config.json").is_file():
        print(f"# no {slots}: the run with Adam slots is left out (make_full_checkpoint.py {slots} --slots)",
              file=sys.stderr)
        slots = None
    out = args.data / "bench-out"
    remove(out)
    hf_version = None if args.no_hf else hf_available()

    def convert(fmt: str, *extra: str, checkpoint: Path = full) -> tuple[list[str], Path, Path]:
        return [str(CLI), fmt, str(checkpoint), "-o", str(out), "-q", *extra], out, checkpoint

    conversions = {  # row -> (command, output); rows ending in fp16/bf16 write half the bytes
        "safetensors fp32": convert("safetensors"),
        # Right after the float32 run, so that both meet the same state of this noisy VM.
        "safetensors fp16": convert("safetensors", "--dtype", "float16"),
    }
    if slots is not None:
        conversions["safetensors fp32, 12 GB with slots"] = convert("safetensors", checkpoint=slots)
    conversions |= {
        "safetensors fp32 --checksums": convert("safetensors", "--checksums"),
        "safetensors bf16": convert("safetensors", "--dtype", "bfloat16"),
        "pytorch fp32": convert("pytorch"),
        "pytorch bf16": convert("pytorch", "--dtype", "bfloat16"),
        "tf2 (tf_model.h5) fp32": convert("tf2"),
        "tf2 (tf_model.h5) fp16": convert("tf2", "--dtype", "float16"),
    }
    if hf_version:
        script = args.data / "hf_convert.py"
        script.write_text(HF_SCRIPT)
        hf_out = args.data / "hf_pytorch_model.bin"
        conversions[f"Hugging Face {hf_version} (encoder only)"] = (
            [str(PYTHON), str(script), str(full / "model.ckpt-0"), str(full / "bert_config.json"),
             str(hf_out)],
            hf_out, full)

    source = data_file(full)
    fp32_bytes = source.stat().st_size  # the model's values; every format adds a few KB of headers
    dd_out = args.data / "dd.out"

    def floor_runs(nbytes: int, label: str) -> list[Run]:
        runs = []
        for flag in ("", "oflag=direct"):
            remove(dd_out)
            command = ["dd", "if=/dev/zero", f"of={dd_out}", "bs=16M", f"count={nbytes}", "iflag=count_bytes"]
            command += [flag] if flag else []
            runs.append(measure(f"dd {label} {flag or 'buffered'}", command, dd_out))
            remove(dd_out)
        return runs

    print(f"# warming the page cache with {source} (and the slots checkpoint's model tensors)", file=sys.stderr)
    subprocess.run(["cat", str(source)], stdout=subprocess.DEVNULL, check=True)
    if slots is not None:
        warm(slots)

    runs: list[Run] = []
    for repeat in range(args.repeats):
        print(f"# repeat {repeat + 1}/{args.repeats} (load {os.getloadavg()[0]:.2f})", file=sys.stderr)
        runs.append(measure("cat source", ["cat", str(source)]))
        runs += floor_runs(fp32_bytes, "fp32 bytes") + floor_runs(fp32_bytes // 2, "half bytes")
        for name, (command, output, checkpoint) in conversions.items():
            remove(output)
            warm(checkpoint)
            runs.append(measure(name, command, output))
            print(f"  {name}: {runs[-1].wall:.2f} s", file=sys.stderr)
            remove(output)
            if args.json:  # so that an interrupted benchmark keeps what it measured
                args.json.write_text(json.dumps([asdict(r) for r in runs], indent=2))
    index_seconds = None
    if slots is not None:
        measure("parse slots index", [str(PYTHON), "-c", "import time, sys; t = time.perf_counter(); "
                              "from converters.tf1_checkpoint import CheckpointReader; "
                              f"CheckpointReader({str(slots)!r}); print(time.perf_counter() - t)"],
                              stdout=args.data / "index_time.txt")
        index_seconds = float((args.data / "index_time.txt").read_text())
    report(runs, args, hf_version, index_seconds)


def median(runs: list[Run], name: str, field: str) -> float:
    return statistics.median(getattr(r, field) for r in runs if r.name == name)


def report(runs: list[Run], args: argparse.Namespace, hf_version: str | None, index_seconds: float | None) -> None:
    cat = median(runs, "cat source", "wall")
    dd = {label: min(median(runs, f"dd {label} {kind}", "wall") for kind in ("buffered", "oflag=direct"))
          for label in ("fp32 bytes", "half bytes")}
    floor = {label: cat + seconds for label, seconds in dd.items()}
    hf_name = next((r.name for r in runs if r.name.startswith("Hugging Face")), None)
    hf_wall = median(runs, hf_name, "wall") if hf_name else None

    names = list(dict.fromkeys(r.name for r in runs))
    load = os.getloadavg()
    print(f"\n{platform.node()}: {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
          f"medians of {args.repeats} runs")
    print(f"floor = cat {cat:.2f} s + dd (faster of buffered / O_DIRECT): fp32 {dd['fp32 bytes']:.2f} s, "
          f"half {dd['half bytes']:.2f} s\n")
    header = f"| {'run':42} | wall s | CPU s | peak RSS | read GB | written GB | x floor | HF / this |"
    print(header)
    print("|" + "|".join("-" * (len(part)) for part in header.split("|")[1:-1]) + "|")
    for name in names:
        wall = median(runs, name, "wall")
        converted = not name.startswith(("cat", "dd", "Hugging"))
        half = any(tag in name for tag in ("fp16", "bf16"))
        ratio = f"{wall / floor['half bytes' if half else 'fp32 bytes']:.2f}" if converted else ""
        speedup = f"{hf_wall / wall:.1f}" if hf_wall and converted else ""
        print(f"| {name:42} | {wall:6.2f} | {median(runs, name, 'cpu'):5.2f} | "
              f"{median(runs, name, 'rss') / 2**20:5.0f} MB | {median(runs, name, 'read') / 1e9:7.2f} | "
              f"{median(runs, name, 'written') / 1e9:10.2f} | {ratio:>7} | {speedup:>9} |")

    print("\ntargets:")
    st = median(runs, "safetensors fp32", "wall")
    st_hashed = median(runs, "safetensors fp32 --checksums", "wall")
    st_rss = median(runs, "safetensors fp32", "rss")
    fp16 = median(runs, "safetensors fp16", "wall")
    # The same ratio within each repeat: float16 ran right after float32 in each.
    pairs = zip([r.wall for r in runs if r.name == "safetensors fp16"],
                [r.wall for r in runs if r.name == "safetensors fp32"], strict=True)
    each = ", ".join(f"{half / full:.2f}" for half, full in pairs)
    checks = [
        (f"safetensors fp32 <= {FLOOR_RATIO_TARGET}x floor ({st / floor['fp32 bytes']:.2f}x; "
         f"with --checksums (sha256 in the report) {st_hashed / floor['fp32 bytes']:.2f}x)",
         st <= FLOOR_RATIO_TARGET * floor["fp32 bytes"]),
        (f"safetensors fp32 peak RSS <= 1 GiB ({st_rss / 2**20:.0f} MB)", st_rss <= RSS_LIMIT),
        (f"safetensors fp16 <= {FLOAT16_OVER_FLOAT32_TARGET}x fp32 ({fp16:.2f} s / {st:.2f} s = {fp16 / st:.2f}x; "
         f"per repeat {each})", fp16 <= FLOAT16_OVER_FLOAT32_TARGET * st),
    ]
    for half in ("safetensors fp16", "safetensors bf16"):  # the same bounds, against the half-size floor
        wall = median(runs, half, "wall")
        checks.append((f"{half} <= {FLOOR_RATIO_TARGET}x floor ({wall / floor['half bytes']:.2f}x)",
                       wall <= FLOOR_RATIO_TARGET * floor["half bytes"]))
    if hf_wall:
        for name in ("safetensors fp32", "safetensors fp16", "safetensors bf16"):
            wall = median(runs, name, "wall")
            checks.append((f"{name} >= {HF_SPEEDUP_TARGET}x faster than Hugging Face ({hf_wall / wall:.1f}x)",
                           hf_wall >= HF_SPEEDUP_TARGET * wall))
    ours = [n for n in names if not n.startswith(("cat", "dd", "Hugging"))]
    worst = max(ours, key=lambda n: median(runs, n, "rss"))
    checks.append((f"peak RSS <= 1 GiB for every format and dtype (largest: {worst}, "
                   f"{median(runs, worst, 'rss') / 2**20:.0f} MB)", median(runs, worst, "rss") <= RSS_LIMIT))
    if index_seconds is not None:
        with_slots = median(runs, "safetensors fp32, 12 GB with slots", "wall")
        checks.append((f"12 GB with slots {with_slots:.2f} s vs 4 GB {st:.2f} s: difference "
                       f"{with_slots - st:+.2f} s, index parse {index_seconds:.2f} s "
                       "(allowed: index + 10% noise)",
                       with_slots <= st * 1.1 + index_seconds))
    for text, ok in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")
    if args.json:
        args.json.write_text(json.dumps({"runs": [asdict(r) for r in runs], "floor": floor,
                                         "hf_version": hf_version, "load": load}, indent=2))


if __name__ == "__main__":
    main()
