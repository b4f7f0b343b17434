"""Interop check: a bundle in Hugging Face transformers' PyTorch classes, as a user gets it from the Auto classes.

Runs against whichever transformers is installed: 5.x in its own environment (scripts/pt5_interop.sh, in CI),
4.57 in the test environment (tests/test_bundle_interop.py). On a bundle of the shipped example it checks
  1. AutoConfig gives a RemBertConfig; each Auto class (AutoModel, AutoModelForMaskedLM, AutoModelForCausalLM
     and the four task heads) loads the bundle with no encoder, pooler or MLM-head weight missing and no
     shape mismatch (only a task head may be new, only what a class has no place for may be left over);
  2. every weight transformers loaded equals ours (`rembert_ref.torch_model`, loaded from the same folder,
     after copying transformers' new task head into ours), and every output (hidden states, attentions,
     pooler, logits, loss) is within 1e-5 of ours; our models are held to the float64 reference of the
     original graph by the bundle's own parity report;
  3. AutoTokenizer gives tokenizer.json's ids on every line of the probe corpus, SentencePiece's on as many
     lines as the converter measured (differences only in the documented classes), and model_max_length is
     the config's max_position_embeddings, so truncation=True gives a sequence the model takes;
  4. pipeline("fill-mask", model=bundle) runs, and its best token and score are ours;
  5. the card's PyTorch usage snippet runs as written (from the bundle's parent folder);
  6. fine-tuned heads (`check_finetuned`): the shipped BLEURT-shaped SavedModel examples/tiny-bleurt and any
     --finetuned checkpoint convert and load as their head class, with logits within 1e-5 of the original
     head on the float64 original graph, and BLEURT's (reference, candidate) pairs encode as it builds them.

    .venv-pt5-interop/bin/python scripts/pt_interop_check.py                 # bundles the example itself
    .venv-pt5-interop/bin/python scripts/pt_interop_check.py --bundle out/tiny-rembert

Exit status 0 when every check passes, 1 otherwise; one line per check.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from interop_common import TOLERANCE, card_snippet, check, check_auto_tokenizer, check_outputs  # noqa: E402
from interop_common import failures, last_line, run_snippet  # noqa: E402

from rembert_ref import torch_model as ours  # noqa: E402
from rembert_ref.config import RemBertConfig  # noqa: E402

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "examples" / "tiny-rembert"
AUTO_CLASSES = {
    "RemBertModel": "AutoModel",
    "RemBertForMaskedLM": "AutoModelForMaskedLM",
    "RemBertForCausalLM": "AutoModelForCausalLM",
    "RemBertForSequenceClassification": "AutoModelForSequenceClassification",
    "RemBertForMultipleChoice": "AutoModelForMultipleChoice",
    "RemBertForTokenClassification": "AutoModelForTokenClassification",
    "RemBertForQuestionAnswering": "AutoModelForQuestionAnswering",
}
TASK_HEADS = ("classifier.", "qa_outputs.")


def make_bundle(checkpoint: str, work: Path, formats: tuple[str, ...]) -> Path:
    """The example bundled; by default with every format this environment can verify (tf2 needs TensorFlow)."""
    from converters.convert import ConvertOptions
    from validation.bundle import bundle_checkpoint

    formats = formats or ("pytorch", "safetensors") + (("tf2",) if importlib.util.find_spec("tensorflow") else ())
    out = work / "tiny-rembert"
    bundle_checkpoint(checkpoint, out, ConvertOptions(quiet=True, tokenizer=str(Path(checkpoint) /
                                                                                "sentencepiece.model")),
                      formats=formats)
    return out


def head_config(name: str, config: RemBertConfig) -> RemBertConfig:
    if name == "RemBertForCausalLM":
        return dataclasses.replace(config, is_decoder=True)
    if name == "RemBertForSequenceClassification":
        return dataclasses.replace(config, num_labels=3)
    if name == "RemBertForTokenClassification":
        return dataclasses.replace(config, num_labels=5)
    return config


def inputs_for(name: str, config: RemBertConfig, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    batch, seq = 3, 9
    mask = np.ones((batch, seq), np.int64)
    mask[1, 6:] = 0
    base = {"input_ids": rng.integers(0, config.vocab_size, (batch, seq)), "attention_mask": mask,
            "token_type_ids": rng.integers(0, config.type_vocab_size, (batch, seq))}
    if name in ("RemBertForMaskedLM", "RemBertForCausalLM"):
        labels = base["input_ids"].copy()
        labels[0, 2] = -100
        base["labels"] = labels
    elif name == "RemBertForSequenceClassification":
        base["labels"] = rng.integers(0, config.num_labels, (batch,))
    elif name == "RemBertForMultipleChoice":
        base = {k: np.stack([np.roll(v, c, axis=1) for c in range(3)], axis=1) for k, v in base.items()}
        base["labels"] = rng.integers(0, 3, (batch,))
    elif name == "RemBertForTokenClassification":
        base["labels"] = rng.integers(0, config.num_labels, (batch, seq))
    elif name == "RemBertForQuestionAnswering":
        base["start_positions"], base["end_positions"] = np.array([1, 2, 4]), np.array([3, 5, 8])
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)) for k, v in base.items()}


def check_class(name: str, bundle: Path, config: RemBertConfig, rng: np.random.Generator) -> None:
    import transformers

    config = head_config(name, config)
    values = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id")}
    hf_config = transformers.RemBertConfig(**values, num_labels=config.num_labels)
    auto = getattr(transformers, AUTO_CLASSES[name])
    theirs, info = auto.from_pretrained(bundle, config=hf_config, output_loading_info=True)
    theirs.eval()
    check(type(theirs).__name__ == name, f"{AUTO_CLASSES[name]}: gives {name}", type(theirs).__name__)
    missing = [k for k in info["missing_keys"] if not k.startswith(TASK_HEADS)]
    check(not missing and not info["mismatched_keys"], f"{name}: nothing missing but a new task head, no "
          f"shape mismatch", f"missing {missing}, mismatched {info['mismatched_keys']}")
    has_pooler = name not in ("RemBertForMaskedLM", "RemBertForCausalLM", "RemBertForTokenClassification",
                              "RemBertForQuestionAnswering")
    has_mlm = name in ("RemBertForMaskedLM", "RemBertForCausalLM")
    allowed = (() if has_pooler else ("rembert.pooler.",)) + (() if has_mlm else ("cls.predictions.",))
    unexpected = [k for k in info["unexpected_keys"] if not k.startswith(allowed)]
    check(not unexpected, f"{name}: nothing left over but what the class has no place for", f"{unexpected}")

    model = ours.MODEL_CLASSES[name].from_pretrained(bundle, config=config)
    their_state = theirs.state_dict()
    own = dict(model.named_parameters())
    with torch.no_grad():
        for key in model.loading_info["newly_initialized"]:
            own[key].copy_(their_state[key])
    our_state = model.state_dict()
    shared = set(their_state) & set(our_state)
    equal = set(their_state) == set(our_state) and all(torch.equal(their_state[k], our_state[k]) for k in shared)
    check(equal, f"{name}: transformers loaded exactly our weights, under our names",
          f"only theirs {sorted(set(their_state) - set(our_state))[:4]}, "
          f"only ours {sorted(set(our_state) - set(their_state))[:4]}")

    inputs = inputs_for(name, config, rng)
    flags = {"output_hidden_states": True, "output_attentions": True}
    with torch.no_grad():
        mine, other = model(**inputs, **flags), theirs(**inputs, **flags)
    check_outputs(name, mine, other, "past_key_values", config.num_hidden_layers, "outputs within 1e-5 of ours")


def check_weight_files_agree(bundle: Path) -> None:
    """pytorch_model.bin (a zip in its streaming form, with data descriptors) loads in transformers and holds
    exactly what model.safetensors holds."""
    import transformers

    if not ((bundle / "pytorch_model.bin").is_file() and (bundle / "model.safetensors").is_file()):
        return
    states = {flag: transformers.AutoModelForMaskedLM.from_pretrained(bundle, use_safetensors=flag).state_dict()
              for flag in (False, True)}
    equal = set(states[False]) == set(states[True]) and all(
        torch.equal(states[False][k], states[True][k]) for k in states[True])
    check(equal, "pytorch_model.bin (use_safetensors=False) loads the same weights as model.safetensors",
          f"{len(states[False])} vs {len(states[True])} tensors")


def check_truncation(bundle: Path, config: RemBertConfig) -> None:
    import transformers

    from converters.tokenizer import probe_corpus

    tokenizer = transformers.AutoTokenizer.from_pretrained(bundle)
    long = tokenizer(" ".join(probe_corpus()), truncation=True, return_tensors="pt")
    model = transformers.AutoModelForMaskedLM.from_pretrained(bundle)
    with torch.no_grad():
        model(**long)
    check(long["input_ids"].shape[1] == config.max_position_embeddings,
          "truncation=True on a long text gives a sequence the model runs", f"{tuple(long['input_ids'].shape)}")


def check_fill_mask(bundle: Path) -> None:
    import transformers

    from validation.bundle import SAMPLE_TEXT

    fill_mask = transformers.pipeline("fill-mask", model=str(bundle))
    best = fill_mask(SAMPLE_TEXT)[0]
    tokenizer = transformers.AutoTokenizer.from_pretrained(bundle)
    encoded = tokenizer(SAMPLE_TEXT, return_tensors="pt")
    position = int((encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0])
    model = ours.RemBertForMaskedLM.from_pretrained(bundle)
    with torch.no_grad():
        probs = model(**encoded).logits[0, position].double().softmax(-1)
    ok = best["token"] == int(probs.argmax()) and abs(best["score"] - float(probs.max())) < TOLERANCE
    check(ok, 'pipeline("fill-mask", model=bundle) runs and its best token is ours',
          f"token {best['token']} score {best['score']:.6f}, ours {int(probs.argmax())} {float(probs.max()):.6f}")


def check_card_snippet(bundle: Path) -> None:
    code = card_snippet(bundle, "pytorch")
    check(code is not None, "the card has a PyTorch usage snippet")
    if code is not None:
        run = run_snippet(bundle, code)
        check(run.returncode == 0, "the card's PyTorch snippet runs as written", last_line(run))


FINETUNED_EXAMPLE = DEFAULT_CHECKPOINT.parent / "tiny-bleurt"


def check_finetuned(spec: str, work: Path) -> None:
    """A fine-tuned checkpoint or SavedModel (`PATH` or `PATH=HEAD`, HEAD a --head value), converted here:
    its Auto class loads it with nothing missing, left over or mismatched, and its logits are within 1e-5 of
    the original head on the float64 original graph. With a tokenizer (BLEURT's sent_piece.model), a
    (reference, candidate) pair encodes as [CLS] reference [SEP] candidate [SEP] with token types 0/1 and
    scores like the reference on those ids (the README's BLEURT recipe)."""
    import json

    import transformers

    from converters.convert import ConvertOptions, convert_checkpoint, find_config, find_sentencepiece
    from converters.tf1_checkpoint import CheckpointReader, resolve_checkpoint
    from rembert_ref.numpy_reference import original_forward, original_head_logits

    path, _, head = spec.partition("=")
    name = Path(path).name
    out = work / f"finetuned-{name}"
    tokenizer = find_sentencepiece(resolve_checkpoint(path))  # BLEURT's sent_piece.model, if beside it
    convert_checkpoint(path, out, ["pytorch", "safetensors"],
                       ConvertOptions(quiet=True, force=True, head=head or None, tokenizer=tokenizer))
    report = json.loads((out / "conversion_report.json").read_text(encoding="utf-8"))
    architecture, kind = report["task_head"]["architecture"], report["task_head"]["kind"]
    auto = AUTO_CLASSES[architecture]
    model, info = getattr(transformers, auto).from_pretrained(out, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    check(type(model).__name__ == architecture and not problems,
          f"fine-tuned {name}: {auto} gives {architecture} with nothing missing, left over or mismatched",
          f"{type(model).__name__} {problems}")
    with CheckpointReader(path) as reader:
        variables = {n: reader.read(n) for n, e in reader.entries.items()
                     if e.dtype == "float32" and "/adam_" not in n}
        original = json.loads(find_config(reader.prefix, None).read_text(encoding="utf-8"))
    if (out / "tokenizer.json").is_file():
        tokenizer = transformers.AutoTokenizer.from_pretrained(out)
        references, candidates = ["The cat sat on the mat.", "It is raining today."], ["A cat sat.", "It rains."]
        batch = tokenizer(references, candidates, padding=True, truncation=True,
                          max_length=tokenizer.model_max_length)
        pieces = [(tokenizer(r, add_special_tokens=False)["input_ids"], tokenizer(c, add_special_tokens=False)
                   ["input_ids"]) for r, c in zip(references, candidates, strict=True)]
        ids = [[tokenizer.cls_token_id, *a, tokenizer.sep_token_id, *b, tokenizer.sep_token_id] for a, b in pieces]
        types = [[0] * (len(a) + 2) + [1] * (len(b) + 1) for a, b in pieces]
        width = max(map(len, ids))
        given_types = batch.get("token_type_ids", [[]] * len(ids))  # 5.x gives them only when configured to
        check([row[:len(i)] for row, i in zip(batch["input_ids"], ids, strict=True)] == ids
              and [row[:len(t)] for row, t in zip(given_types, types, strict=True)] == types,
              f"fine-tuned {name}: a pair encodes as [CLS] reference [SEP] candidate [SEP], token types 0/1",
              f"AutoTokenizer returns {sorted(batch.keys())}")
        inputs = {k: np.array(v) for k, v in batch.items() if k in ("input_ids", "token_type_ids", "attention_mask")}
        assert inputs["input_ids"].shape[1] == width
    else:
        rng = np.random.default_rng(13)
        inputs = {"input_ids": rng.integers(0, original["vocab_size"], (2, 9)),
                  "token_type_ids": np.array([[0] * 5 + [1] * 4, [0] * 3 + [1] * 6]),
                  "attention_mask": np.array([[1] * 9, [1] * 6 + [0] * 3])}
    expected = original_head_logits(variables, kind, original_forward(variables, original, **inputs))
    with torch.no_grad():
        result = model.eval()(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    worst = max(float(np.max(np.abs(getattr(result, k).double().numpy() - v))) for k, v in expected.items())
    check(worst <= TOLERANCE, f"fine-tuned {name}: {'/'.join(expected)} within 1e-5 of the original head in "
          "float64", f"max abs {worst:.2e}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                        help="original TF1 checkpoint directory (with bert_config.json and sentencepiece.model)")
    parser.add_argument("--bundle", help="check this bundle instead of bundling the checkpoint")
    parser.add_argument("--format", dest="formats", action="append", default=[],
                        choices=["pytorch", "safetensors", "tf2"], help="formats of the bundle made (repeatable)")
    parser.add_argument("--finetuned", action="append", default=[str(FINETUNED_EXAMPLE)], metavar="PATH[=HEAD]",
                        help="also check this fine-tuned checkpoint or SavedModel, with --head HEAD if given "
                             "(repeatable; the shipped examples/tiny-bleurt always)")
    args = parser.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()  # load reports and notes: the checks below say what matters
    transformers.logging.disable_progress_bar()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        formats = tuple(args.formats)
        bundle = Path(args.bundle).resolve() if args.bundle else make_bundle(args.checkpoint, Path(tmp), formats)
        config = RemBertConfig.from_json_file(bundle / "config.json")
        hf_config = transformers.AutoConfig.from_pretrained(bundle)
        check(type(hf_config).__name__ == "RemBertConfig", "AutoConfig gives RemBertConfig", type(hf_config).__name__)
        rng = np.random.default_rng(0)
        for name in AUTO_CLASSES:
            check_class(name, bundle, config, rng)
        check_weight_files_agree(bundle)
        check_auto_tokenizer(bundle, config.max_position_embeddings)
        check_truncation(bundle, config)
        check_fill_mask(bundle)
        check_card_snippet(bundle)
        for spec in dict.fromkeys(args.finetuned):
            check_finetuned(spec, Path(tmp))
    print(f"{'all checks passed' if not failures else f'{len(failures)} check(s) failed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
