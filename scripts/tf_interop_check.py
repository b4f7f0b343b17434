"""Interop check: our tf_model.h5 in Hugging Face transformers 4.57's TF classes (run by scripts/tf_interop.sh).

For each of the seven TFRemBert* classes it
  1. loads the converted tf_model.h5 with transformers' `from_pretrained(..., output_loading_info=True)` and
     requires that no encoder, pooler or MLM-head weight is missing, unexpected or mismatched: only the task
     head may be new, and only the weights a class has no place for (the pooler in a pooler-less head, the
     MLM head in a task head) may be left over;
  2. checks that every weight transformers loaded equals the same weight in our TF2 model
     (`rembert_ref.tf_model`, loaded from the same file), after copying transformers' new task head into ours;
  3. runs both on the same inputs and compares every output (all hidden states, attentions, pooler, logits,
     cache, loss) within 1e-5 max abs.
It also checks that the file written by transformers' own `save_pretrained` has the same layer and weight
names as ours, and that the --no-mlm-head file loads into TFRemBertModel with nothing missing or left over.

Loss shapes differ by design: transformers' TF heads return per-example losses (shape (B,)) for sequence
classification, multiple choice and question answering, where ours (like PyTorch) return the mean; the check
compares our loss with the mean of theirs. Question-answering positions are kept inside the sequence, since
transformers' TF loss does not clamp and ignore them as PyTorch does.

    bash scripts/tf_interop.sh                                  # builds .venv-tf-interop, then runs this
    .venv-tf-interop/bin/python scripts/tf_interop_check.py --checkpoint examples/tiny-rembert --keep out/interop

Exit status 0 when every check passes, 1 otherwise; one line per check.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from interop_common import TOLERANCE, card_snippet, check, check_auto_tokenizer, check_outputs  # noqa: E402
from interop_common import failures, last_line, run_snippet  # noqa: E402

from converters.convert import ConvertOptions, convert_checkpoint  # noqa: E402
from rembert_ref import tf_model as ours  # noqa: E402
from rembert_ref.config import RemBertConfig  # noqa: E402
from rembert_ref.weight_files import h5_attribute  # noqa: E402

POOLER = {"rembert/pooler/dense/kernel:0", "rembert/pooler/dense/bias:0"}
TASK_HEADS = {"classifier", "qa_outputs"}
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "examples" / "tiny-rembert"


def allowed_leftovers(name: str) -> tuple[set[str], set[str]]:
    """(names that may be missing, names that may be unexpected) for one class, as transformers reports them:
    top-level layer names and weight names below the root."""
    has_pooler = ours.MODEL_CLASSES[name].add_pooling_layer
    has_mlm = name in ("TFRemBertForMaskedLM", "TFRemBertForCausalLM")
    missing = set(TASK_HEADS) | {f"{h}/{w}:0" for h in TASK_HEADS for w in ("kernel", "bias")}
    unexpected = (set() if has_pooler else set(POOLER)) | (set() if has_mlm else {"mlm___cls"})
    return missing, unexpected


def inputs_for(name: str, config: RemBertConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    batch, seq = 3, 9
    mask = np.ones((batch, seq), np.int32)
    mask[1, 6:] = 0
    base = {"input_ids": rng.integers(0, config.vocab_size, (batch, seq)).astype(np.int32),
            "attention_mask": mask,
            "token_type_ids": rng.integers(0, config.type_vocab_size, (batch, seq)).astype(np.int32)}
    if name in ("TFRemBertForMaskedLM", "TFRemBertForCausalLM"):
        labels = base["input_ids"].copy()
        labels[0, 2] = -100
        return {**base, "labels": labels}
    if name == "TFRemBertForSequenceClassification":
        return {**base, "labels": rng.integers(0, config.num_labels, (batch,)).astype(np.int32)}
    if name == "TFRemBertForMultipleChoice":
        stacked = {k: np.stack([np.roll(v, c, axis=1) for c in range(3)], axis=1) for k, v in base.items()}
        return {**stacked, "labels": rng.integers(0, 3, (batch,)).astype(np.int32)}
    if name == "TFRemBertForTokenClassification":
        labels = rng.integers(0, config.num_labels, (batch, seq)).astype(np.int32)
        labels[1, 6:] = -100
        return {**base, "labels": labels}
    if name == "TFRemBertForQuestionAnswering":
        positions = {"start_positions": np.array([1, 2, 4], np.int32), "end_positions": np.array([3, 5, 8], np.int32)}
        return {**base, **positions}
    return base


def to_transformers(config: RemBertConfig):
    """transformers.RemBertConfig with our fields; num_labels explicit, since a label map read from config.json
    would otherwise fix the number of labels."""
    import transformers

    values = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id")}
    return transformers.RemBertConfig(**values, num_labels=config.num_labels)


def check_class(name: str, directory: Path, base_config: RemBertConfig, rng: np.random.Generator) -> None:
    import transformers

    config = base_config
    if name == "TFRemBertForCausalLM":
        config = dataclasses.replace(config, is_decoder=True)
    elif name == "TFRemBertForSequenceClassification":
        config = dataclasses.replace(config, num_labels=3)
    elif name == "TFRemBertForTokenClassification":
        config = dataclasses.replace(config, num_labels=5)
    hf_config = to_transformers(config)
    hf_model, info = getattr(transformers, name).from_pretrained(directory, config=hf_config, output_loading_info=True)
    may_miss, may_leave = allowed_leftovers(name)
    weightless = {layer.name for layer in hf_model.layers if not layer.weights}  # e.g. a Dropout layer
    missing, unexpected = set(info["missing_keys"]) - weightless, set(info["unexpected_keys"])
    check(missing <= may_miss, f"{name}: nothing of the encoder/pooler/MLM head missing",
          f"missing {sorted(missing)}")
    check(unexpected <= may_leave, f"{name}: nothing unexpected but what the class has no place for",
          f"unexpected {sorted(unexpected)}")
    check(not info["mismatched_keys"], f"{name}: no shape mismatches", f"{info['mismatched_keys']}")

    model = ours.MODEL_CLASSES[name].from_pretrained(directory, config=config)
    hf_weights = {w.name.split("/", 1)[1]: w.numpy() for w in hf_model.weights}
    model.assign_weights({k: v for k, v in hf_weights.items() if k.split("/", 1)[0] in TASK_HEADS})
    our_weights = {k: v.numpy() for k, v in model.weights_by_name().items()}
    same_names = set(hf_weights) == set(our_weights)
    equal = same_names and all(np.array_equal(hf_weights[k], our_weights[k]) for k in hf_weights)
    check(equal, f"{name}: transformers loaded exactly our weights, under our names",
          "" if same_names else f"only theirs {sorted(set(hf_weights) - set(our_weights))[:4]}, "
          f"only ours {sorted(set(our_weights) - set(hf_weights))[:4]}")

    inputs = inputs_for(name, config, rng)
    flags = {"output_hidden_states": True, "output_attentions": True}
    if name == "TFRemBertForCausalLM":
        flags["use_cache"] = True
    theirs = hf_model({k: tf.constant(v) for k, v in inputs.items()}, training=False, **flags)
    mine = model(**{k: tf.constant(v) for k, v in inputs.items()}, **flags)
    check_outputs(name, mine, theirs, "loss", config.num_hidden_layers, "outputs match ours")
    if "labels" in inputs or "start_positions" in inputs:
        diff = abs(float(mine.loss) - float(np.mean(theirs.loss)))
        check(diff < TOLERANCE, f"{name}: loss matches ours", f"ours {float(mine.loss):.6f}, "
              f"theirs {np.asarray(theirs.loss).round(6).tolist()} (mean compared), diff {diff:.2e}")


def check_layout_against_transformers_writer(directory: Path, work: Path) -> None:
    """transformers' own save_pretrained of the MLM head: the same layer names and weight names as our file."""
    import transformers

    config = RemBertConfig.from_json_file(directory / "config.json")
    hf_model = transformers.TFRemBertForMaskedLM.from_pretrained(directory, config=to_transformers(config))
    hf_model.save_pretrained(work / "hf-saved")
    names = {}
    for label, path in (("ours", directory / "tf_model.h5"), ("theirs", work / "hf-saved" / "tf_model.h5")):
        with h5py.File(path, "r") as f:
            layers = h5_attribute(f, "layer_names")
            stored = [w for layer in layers for w in h5_attribute(f[layer], "weight_names")]
        # The root differs only when Keras uniquifies a second instance's name (tf_rem_bert_for_masked_lm_1).
        roots = {w.split("/", 1)[0] for w in stored}
        names[label] = (layers, {w.split("/", 1)[1] for w in stored}, roots)
    ours_names = names["ours"][1] - POOLER  # TFRemBertForMaskedLM has no pooler
    check(names["ours"][0] == names["theirs"][0], "layer_names as transformers writes them",
          f"ours {names['ours'][0]}, theirs {names['theirs'][0]}")
    theirs = names["theirs"][1]
    check(ours_names == theirs, "weight_names below the root as transformers writes them (pooler aside)",
          f"{len(theirs)} names, roots ours {sorted(names['ours'][2])} theirs {sorted(names['theirs'][2])}; "
          f"only ours {sorted(ours_names - theirs)[:3]}, only theirs {sorted(theirs - ours_names)[:3]}")


def check_finetuned(work: Path) -> None:
    """Fine-tuned task heads: the shipped BLEURT-shaped SavedModel and run_classifier- / run_squad-style
    checkpoints (written by TensorFlow through testkit.finetuned), converted to tf_model.h5, load into
    transformers' TFRemBertForSequenceClassification / TFRemBertForQuestionAnswering with nothing missing or
    left over, and their logits equal the original head on the float64 original graph within 1e-5."""
    import json

    import transformers

    from converters.convert import find_config
    from converters.tf1_checkpoint import CheckpointReader
    from rembert_ref.numpy_reference import original_forward, original_head_logits
    from testkit.finetuned import PRESET_CONFIGS, write_finetuned_checkpoint

    classifier = write_finetuned_checkpoint(work / "run_classifier-ckpt", PRESET_CONFIGS["run_classifier"],
                                            "run_classifier", num_labels=3)
    squad = write_finetuned_checkpoint(work / "run_squad-ckpt", PRESET_CONFIGS["squad"], "squad")
    cases = [("tiny-bleurt", DEFAULT_CHECKPOINT.parent / "tiny-bleurt", None, "sequence-classification"),
             ("run_classifier", classifier, "sequence-classification", "sequence-classification"),
             ("run_squad", squad, None, "question-answering")]
    for name, ckpt, head, kind in cases:
        out = work / f"tf2-{name}"
        convert_checkpoint(ckpt, out, ["tf2"], ConvertOptions(quiet=True, force=True, head=head))
        architecture = json.loads((out / "config.json").read_text())["architectures"][0]
        model, info = getattr(transformers, f"TF{architecture}").from_pretrained(out, output_loading_info=True)
        # The classifier's Dropout is an unnamed Keras layer (dropout_<process-wide counter>) without weights:
        # transformers lists it as missing even for its own save_pretrained file (which also lists the saved
        # process's dropout_<k> as unexpected), so only a weightless dropout layer may be "missing".
        missing = [k for k in info["missing_keys"] if not re.fullmatch(r"dropout_\d+", k)]
        check(not missing and not info["unexpected_keys"] and not info["mismatched_keys"],
              f"{name}: TF{architecture} loads tf_model.h5 with no weight missing or left over", str(info))
        with CheckpointReader(ckpt) as reader:
            variables = {n: reader.read(n) for n, e in reader.entries.items()
                         if e.dtype == "float32" and "/adam_" not in n}
            original = json.loads(find_config(reader.prefix, None).read_text())
        rng = np.random.default_rng(3)
        inputs = {"input_ids": rng.integers(0, original["vocab_size"], (2, 9)),
                  "token_type_ids": np.array([[0] * 5 + [1] * 4, [0] * 3 + [1] * 6]),
                  "attention_mask": np.array([[1] * 9, [1] * 6 + [0] * 3])}
        expected = original_head_logits(variables, kind, original_forward(variables, original, **inputs))
        outputs = model({k: tf.constant(v) for k, v in inputs.items()}, training=False)
        worst = max(float(np.max(np.abs(getattr(outputs, k).numpy() - v))) for k, v in expected.items())
        check(worst <= TOLERANCE, f"{name}: TF{architecture} {'/'.join(expected)} vs the original head in float64",
              f"max abs {worst:.2e}")


def check_bundle(bundle: Path) -> None:
    """A bundle as a TensorFlow user of transformers 4.57 gets it: AutoTokenizer, fill-mask, the card's
    TensorFlow snippet as written, and each workaround the card names still needed (without it, it fails)."""
    import transformers

    from validation.bundle import SAMPLE_TEXT

    config = RemBertConfig.from_json_file(bundle / "config.json")
    check_auto_tokenizer(bundle, config.max_position_embeddings)
    fill_mask = transformers.pipeline("fill-mask", model=str(bundle), dtype=None,
                                      model_kwargs={"use_safetensors": False})
    best = fill_mask(SAMPLE_TEXT)[0]
    tokenizer = transformers.AutoTokenizer.from_pretrained(bundle)
    encoded = tokenizer(SAMPLE_TEXT, return_tensors="np")
    position = int(np.flatnonzero(encoded["input_ids"][0] == tokenizer.mask_token_id)[0])
    model = ours.TFRemBertForMaskedLM.from_pretrained(bundle)
    logits = model(**{k: tf.constant(v) for k, v in encoded.items()}).logits.numpy()[0, position]
    probs = np.exp(logits.astype(np.float64) - logits.max())
    probs /= probs.sum()
    check(best["token"] == int(probs.argmax()) and abs(best["score"] - probs.max()) < TOLERANCE,
          'pipeline("fill-mask", model=bundle) runs (TF) and its best token is ours',
          f"token {best['token']} score {best['score']:.6f}, ours {int(probs.argmax())} {probs.max():.6f}")

    code = card_snippet(bundle, "tensorflow")
    check(code is not None, "the card has a TensorFlow usage snippet")
    if code is None:
        return
    run = run_snippet(bundle, code)
    check(run.returncode == 0, "the card's TensorFlow snippet runs as written", last_line(run))
    workarounds = {"use_safetensors=False": ("'builtins.safe_open' object is not iterable",
                                             code.replace(", use_safetensors=False", "")
                                             .replace(', model_kwargs={"use_safetensors": False}', "")),
                   "dtype=None": ("name 'torch' is not defined", code.replace(", dtype=None", ""))}
    for name, (symptom, without) in workarounds.items():
        if without == code:
            continue
        run = run_snippet(bundle, without)
        check(run.returncode != 0 and symptom in run.stderr, f"the card's workaround {name} is needed",
              f"without it: {last_line(run)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                        help="original TF1 checkpoint (prefix or directory with bert_config.json)")
    parser.add_argument("--keep", help="write the converted files here instead of a temporary directory")
    parser.add_argument("--bundle", help="also check this bundle (made by convert-rembert bundle): tokenizer, "
                        "fill-mask, the card's TensorFlow snippet and its workarounds")
    args = parser.parse_args()
    import transformers

    print(f"transformers {transformers.__version__}, tensorflow {tf.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        with_head, bare = work / "tf2", work / "tf2-no-mlm-head"
        options = {"quiet": True, "force": True}
        convert_checkpoint(args.checkpoint, with_head, ["tf2"], ConvertOptions(**options))
        convert_checkpoint(args.checkpoint, bare, ["tf2"], ConvertOptions(mlm_head=False, **options))
        config = RemBertConfig.from_json_file(with_head / "config.json")
        rng = np.random.default_rng(0)
        for name in ours.MODEL_CLASSES:
            check_class(name, with_head, config, rng)
        _, info = transformers.TFRemBertModel.from_pretrained(bare, output_loading_info=True)
        check(not info["missing_keys"] and not info["unexpected_keys"],
              "--no-mlm-head file: TFRemBertModel loads it with nothing missing or left over",
              f"missing {info['missing_keys']}, unexpected {info['unexpected_keys']}")
        check_layout_against_transformers_writer(with_head, work)
        check_finetuned(work)
        if args.bundle:
            check_bundle(Path(args.bundle).resolve())
        else:
            print("(no --bundle given: the bundle, its card and tokenizer were not checked)")
    print(f"{'all checks passed' if not failures else f'{len(failures)} check(s) failed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
