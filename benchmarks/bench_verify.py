"""Benchmark: `verify` and `bundle` of the full-size RemBERT checkpoint, beside Hugging Face's conversion.

One run measures, each in a subprocess (wall, CPU, peak RSS, bytes read), from a warm page cache:
- the yardstick: Hugging Face's official conversion path (`RemBertModel(config)`, `load_tf_weights_in_rembert`,
  `torch.save`; encoder only, no proof), the script `bench_convert.py` runs;
- the floor: reading each format once (`cat` of pytorch_model.bin, model.safetensors, tf_model.h5 and of the
  checkpoint's data, which verify reads too);
- `convert-rembert verify` of a folder holding the three formats and the tokenizer below (every tensor bit for
  bit, 7 heads x 3 formats against the float64 original graph, on probe text through that tokenizer);
- `convert-rembert bundle` with a SentencePiece model of the full vocabulary (convert + tokenizer + verify);
- bundle's disk traffic alone: the three formats written past the page cache (O_DIRECT, as convert writes them)
  and read back from the disk, as bundle's verify reads them, with no other work (DISK_SCRIPT).

Targets (PASS/FAIL): verify wall <= the Hugging Face path's wall; bundle wall <= 1.5x that; peak RSS of each
<= 5 GiB. The SentencePiece model is handmade (testkit.spm_models.handmade_unigram_model): 250,300 pieces,
single characters of many scripts with and without the word-start mark, then filler pieces; its tokenizer is
what the bundle converts and what verify's probe text goes through.

    .venv/bin/python benchmarks/make_full_checkpoint.py ../bench-data/full
    .venv/bin/python benchmarks/bench_verify.py --data ../bench-data
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pty
import statistics
import subprocess
import sys
import time
import unicodedata
from dataclasses import asdict
from pathlib import Path

from bench_convert import HF_SCRIPT, PYTHON, REPO, Run, data_file, hf_available, measure, remove, warm

RSS_TARGET = 5 << 30
VERIFY, BUNDLE = "verify (3 formats x 7 heads)", "bundle (convert + tokenizer + verify)"
DISK_WRITE, DISK_READ = "disk: write the 3 formats, no cache", "disk: read them back, no cache"
# What bundle asks of the disk, and nothing else: each format file (from the warm cache) written with O_DIRECT
# in 16 MiB blocks and flushed (`write`), then each read back with O_DIRECT and deleted (`read`). Reads and writes
# share this VM's disk (a 4 GB write and a 4 GB read side by side took as long as one after the other), so the
# two together are a floor for bundle's disk-bound parts however the rest of its work is arranged.
DISK_SCRIPT = """
import fcntl, mmap, os, sys
BLOCK = 16 << 20
block = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
mode, scratch, sources = sys.argv[1], sys.argv[2], sys.argv[3:]
copies = [os.path.join(scratch, os.path.basename(source)) for source in sources]
if mode == "write":
    for source, copy in zip(sources, copies):
        out = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
        with open(source, "rb", buffering=0) as data:
            while n := data.readinto(block):
                if n % 4096:  # the last, partial block: O_DIRECT takes whole blocks only
                    fcntl.fcntl(out, fcntl.F_SETFL, fcntl.fcntl(out, fcntl.F_GETFL) & ~os.O_DIRECT)
                os.write(out, memoryview(block)[:n])
        os.fdatasync(out)
        os.close(out)
else:
    for copy in copies:
        fd = os.open(copy, os.O_RDONLY | os.O_DIRECT)
        while os.readv(fd, [block]) > 0:
            pass
        os.close(fd)
        os.unlink(copy)
"""
VERIFY_VS_HF, BUNDLE_VS_HF = 1.0, 1.5
VOCAB = 250300
SCRIPT_RANGES = [(0x21, 0x7E), (0xA1, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F),
                 (0xE00, 0xE7F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1F64F)]


def full_vocab_sentencepiece(path: Path) -> Path:
    """A unigram model with exactly VOCAB pieces: characters of many scripts, then fillers."""
    sys.path.insert(0, str(REPO))
    from testkit.spm_models import REMBERT_SPECIAL_PIECES, handmade_unigram_model

    chars = [chr(c) for lo, hi in SCRIPT_RANGES for c in range(lo, hi + 1)
             if not unicodedata.category(chr(c)).startswith(("C", "Z"))]
    pieces: dict[str, float] = {}
    for c in chars:
        pieces.setdefault("\u2581" + c, -9.0)
        pieces.setdefault(c, -10.0)
    wanted = VOCAB - 2 - len(REMBERT_SPECIAL_PIECES)
    k = 0
    while len(pieces) < wanted:
        pieces.setdefault(f"\u2581filler{k}", -20.0)
        k += 1
    return handmade_unigram_model(path, list(pieces.items())[:wanted])


def cli(*args: str) -> list[str]:
    return [str(PYTHON), "-m", "rembert_convert.cli", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../bench-data"), help="holds full/; outputs go here")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write every run here")
    args = parser.parse_args()
    full = args.data / "full"
    if not (full / "bert_config.json").is_file():
        sys.exit(f"error: no checkpoint in {full}; make it with benchmarks/make_full_checkpoint.py {full}")
    os.environ["PYTHONPATH"] = str(REPO)
    work = args.data / "verify-bench"
    remove(work)
    work.mkdir(parents=True)
    spm = full_vocab_sentencepiece(work / "sentencepiece.model")
    converted, bundled = work / "converted", work / "bundle"
    print("# converting the three formats once (the folder verify checks)", file=sys.stderr)
    subprocess.run(cli("convert", str(full), "-o", str(converted), "-q", "--tokenizer", str(spm)), check=True)
    hf_version = hf_available()
    if hf_version is None:
        sys.exit("error: the yardstick needs transformers<5 (load_tf_weights_in_rembert)")
    script = work / "hf_convert.py"
    script.write_text(HF_SCRIPT)
    hf_out = work / "hf_pytorch_model.bin"
    format_files = [converted / "pytorch_model.bin", converted / "model.safetensors", converted / "tf_model.h5"]
    # convert writes past the page cache (DirectFile): read its output once, so that every
    # repeat's floor and verify start from a warm cache, as in the earlier runs (bundle's verify reads from disk).
    for path in format_files:
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)

    runs: list[Run] = []
    for repeat in range(args.repeats):
        print(f"# repeat {repeat + 1}/{args.repeats} (load {os.getloadavg()[0]:.2f})", file=sys.stderr)
        warm(full)
        remove(hf_out)
        runs.append(measure(f"Hugging Face {hf_version} convert (encoder only)",
                            [str(PYTHON), str(script), str(full / "model.ckpt-0"), str(full / "bert_config.json"),
                             str(hf_out)], hf_out))
        remove(hf_out)
        for path in [data_file(full), *format_files]:
            runs.append(measure(f"floor: cat {path.name}", ["cat", str(path)]))
        disk = work / "disk"
        disk.mkdir(exist_ok=True)
        for name, mode in ((DISK_WRITE, "write"), (DISK_READ, "read")):
            runs.append(measure(name, [str(PYTHON), "-c", DISK_SCRIPT, mode, str(disk), *map(str, format_files)]))
        remove(disk)
        warm(full)
        runs.append(measure(VERIFY, cli("verify", str(full), str(converted), "-q"),
                            stdout=work / "verify.txt"))
        remove(bundled)
        warm(full)
        runs.append(measure(BUNDLE,
                            cli("bundle", str(full), "-o", str(bundled), "-q", "--tokenizer", str(spm)), bundled))
        remove(bundled)
        for run in runs[-9:]:
            print(f"  {run.name}: {run.wall:.2f} s, {run.rss / 2**30:.2f} GiB", file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps([asdict(r) for r in runs], indent=2))
    print("# one more verify and bundle on a terminal, untimed, for their step lines", file=sys.stderr)
    warm(full)
    profile = {VERIFY: step_lines(cli("verify", str(full), str(converted)))}
    remove(bundled)
    warm(full)
    profile[BUNDLE] = step_lines(cli("bundle", str(full), "-o", str(bundled), "--tokenizer", str(spm)))
    remove(bundled)
    report(runs, profile, args)


def step_lines(command: list[str]) -> list[str]:
    """Run `command` with its stderr on a pseudo-terminal, where it shows progress, and return the line each
    finished step leaves ("[  9.0 s] convert to ... done (7.9 s)"), then the process's wall time at its exit."""
    master, terminal = pty.openpty()
    started = time.perf_counter()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: the command's side of the terminal has closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    if process.wait() != 0:
        raise SystemExit(f"failed ({process.returncode}): {' '.join(command)}")
    wall = time.perf_counter() - started
    lines = b"".join(chunks).decode(errors="replace").split("\n")
    lines = [line.rstrip("\r").split("\r")[-1].replace("\x1b[K", "") for line in lines]  # the last redraw
    return [line for line in lines if line.startswith("[") and " done (" in line] + [f"[{wall:6.1f} s] exited"]


def median(runs: list[Run], name: str, field: str) -> float:
    return statistics.median(getattr(r, field) for r in runs if r.name == name)


def report(runs: list[Run], profile: dict[str, list[str]], args: argparse.Namespace) -> None:
    names = list(dict.fromkeys(r.name for r in runs))
    hf = next(n for n in names if n.startswith("Hugging Face"))
    floor = sum(median(runs, n, "wall") for n in names if n.startswith("floor"))
    load = os.getloadavg()
    print(f"\n{platform.node()}: {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
          f"medians of {args.repeats} run(s)\n")
    header = f"| {'run':42} | wall s | CPU s | peak RSS GiB | read GB |"
    print(header)
    print("|" + "|".join("-" * len(part) for part in header.split("|")[1:-1]) + "|")
    for name in names:
        print(f"| {name:42} | {median(runs, name, 'wall'):6.2f} | {median(runs, name, 'cpu'):5.1f} | "
              f"{median(runs, name, 'rss') / 2**30:12.2f} | {median(runs, name, 'read') / 1e9:7.2f} |")
    hf_wall = median(runs, hf, "wall")
    print(f"\nfloor (reading the checkpoint and each format once): {floor:.2f} s")
    write, read = median(runs, DISK_WRITE, "wall"), median(runs, DISK_READ, "wall")
    print(f"bundle's disk traffic alone (its 3 formats written and read back past the page cache): "
          f"{write:.2f} + {read:.2f} = {write + read:.2f} s")
    print("targets:")
    checks = [
        (f"verify {median(runs, VERIFY, 'wall'):.1f} s <= Hugging Face convert {hf_wall:.1f} s",
         median(runs, VERIFY, "wall") <= VERIFY_VS_HF * hf_wall),
        (f"bundle {median(runs, BUNDLE, 'wall'):.1f} s <= {BUNDLE_VS_HF}x Hugging Face convert "
         f"{BUNDLE_VS_HF * hf_wall:.1f} s", median(runs, BUNDLE, "wall") <= BUNDLE_VS_HF * hf_wall),
    ]
    for name in (VERIFY, BUNDLE):  # memory is a limit, not an average: the largest peak of any repeat counts
        rss = max(r.rss for r in runs if r.name == name)
        checks.append((f"{name.split(' ')[0]} peak RSS {rss / 2**30:.2f} GiB (largest of the repeats) <= 5 GiB",
                       rss <= RSS_TARGET))
    for text, ok in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")
    yardstick = [r.wall for r in runs if r.name == hf]
    print("\neach repeat against the yardstick of the same repeat:")
    for name in (VERIFY, BUNDLE):
        ratios = [r.wall / y for r, y in zip([r for r in runs if r.name == name], yardstick, strict=True)]
        print(f"  {name.split(' ')[0]}: {', '.join(f'{x:.2f}x' for x in ratios)}")
    for name, lines in profile.items():
        print(f"\nwhere the time goes: one {name.split(' ')[0]} on a terminal, after the timed repeats")
        print("\n".join(f"  {line}" for line in lines))


if __name__ == "__main__":
    main()
