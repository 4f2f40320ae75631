"""``python -m finetune``: train, evaluate, merge QLoRA adapters, and build training data from a knowledge base.

    python -m finetune train --data TRAIN.jsonl --out adapters/NAME [--max-steps N] [--resume] [--kb KB]
    python -m finetune eval --adapter adapters/NAME --data HELDOUT.jsonl [--limit N]
    python -m finetune merge --adapter adapters/NAME --out models/NAME
    python -m finetune build-data --kb KB --out X.jsonl [--questions N [--writer qwen2.5-1.5b]]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path


def _records(args, settings):
    from finetune.data import mix_general, read_jsonl

    report = read_jsonl(args.data, strict=args.strict)
    for problem in report.problems:
        print(f"skipped {problem}", file=sys.stderr)
    records = report.records
    if getattr(args, "mix", None):
        general = read_jsonl(args.mix, strict=args.strict)
        records = mix_general(records, general.records, args.mix_ratio, settings.finetune.seed)
    if getattr(args, "kb", None):
        from finetune.data import attach_passages
        from kbcore.store import KnowledgeBase

        records = attach_passages(records, KnowledgeBase(args.kb, readonly=True))
    return records


def cmd_train(args, settings) -> int:
    from finetune.data import data_sha256, encode_all
    from finetune.train import config_from_settings, local_base, train_adapter
    from engine.models import load_model

    settings = replace(settings, llm=local_base(settings))
    config = config_from_settings(settings.finetune, max_steps=args.max_steps, max_seq_length=args.max_seq_length,
                                       gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr)
    records = _records(args, settings)
    loaded = load_model(settings.llm, settings.cache_dir, adapters_dir=settings.adapters_dir, for_training=True)
    examples = encode_all(loaded.tokenizer, records, config.max_seq_length)
    print(f"{len(examples)} examples, {sum(e.answer_tokens for e in examples)} answer tokens; "
          f"base {loaded.model_id} ({loaded.base_sha256[:12]}); {config}", file=sys.stderr)
    result = train_adapter(loaded, examples, args.out, config, data_sha256=data_sha256(records), resume=args.resume)
    print(json.dumps({"out": str(result.out_dir), **result.metrics}))
    return 0


def cmd_eval(args, settings) -> int:
    from finetune.evaluate import compare, format_table, summary_line
    from finetune.train import local_base, update_metrics

    settings = replace(settings, llm=local_base(settings))
    records = _records(args, settings)[: args.limit or None]
    result = compare(settings, args.adapter, records, max_seq_length=args.max_seq_length or
                     settings.finetune.max_seq_length, max_new_tokens=args.max_new_tokens)
    for ex in result["examples"]:
        print(json.dumps(ex, ensure_ascii=False))
    print(format_table(result))
    adapter_dir = Path(args.adapter)
    if adapter_dir.is_dir():
        update_metrics(adapter_dir, {f"heldout_{k}": v for k, v in json.loads(summary_line(result)).items()})
    print(summary_line(result))
    return 0


def cmd_merge(args, settings) -> int:
    from finetune.merge import merge_adapter
    from finetune.train import local_base

    out = merge_adapter(replace(settings, llm=local_base(settings)), args.adapter, args.out)
    print(f"standalone model written to {out}")
    return 0


def cmd_build_data(args, settings) -> int:
    from finetune.data import build_from_kb, write_jsonl
    from kbcore.store import KnowledgeBase

    records = build_from_kb(KnowledgeBase(args.kb, readonly=True), refusal_ratio=args.refusal_ratio,
                            seed=settings.finetune.seed)
    if args.questions:
        records += _reading_pairs(args, settings)
    n = write_jsonl(records, args.out)
    refusals = sum(1 for r in records if r.origin.startswith("kb-refusal"))
    print(f"{n} records ({refusals} refusals) written to {args.out}")
    return 0 if n else 1


def _reading_pairs(args, settings):
    """Questions the local model (or ``--writer``) writes about the knowledge base's sentences, answered from
    what retrieval shows (finetune.reading)."""
    from finetune.reading import build_reading_pairs, write_questions_with
    from llm.answerer import Answerer
    from retrieval import open_retriever

    retriever = open_retriever(settings, args.kb)
    answerer = Answerer(settings, retriever)
    writer = answerer
    if args.writer and args.writer != settings.llm.model:
        writer = Answerer(settings.with_overrides(llm={"model": args.writer}), retriever)
    return build_reading_pairs(answerer, write_questions_with(writer), count=args.questions,
                               refusal_ratio=args.refusal_ratio, seed=settings.finetune.seed,
                               log=None if args.quiet else lambda line: print(line, file=sys.stderr))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML settings file")
    sub = parser.add_subparsers(dest="command", required=True)

    def data_options(p):
        p.add_argument("--data", required=True, help="instruction JSONL (instruction, input, output)")
        p.add_argument("--strict", action="store_true", help="refuse the file at its first malformed line")
        p.add_argument("--kb", help="knowledge base whose best-matching chunks become each pair's passages")
        p.add_argument("--max-seq-length", type=int)

    train = sub.add_parser("train", help="train a QLoRA adapter")
    data_options(train)
    train.add_argument("--out", required=True, help="adapter folder, e.g. adapters/NAME")
    train.add_argument("--max-steps", type=int)
    train.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    train.add_argument("--lr", type=float)
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    train.add_argument("--mix", help="general instruction JSONL mixed in against forgetting")
    train.add_argument("--mix-ratio", type=float, default=0.2)
    train.set_defaults(run=cmd_train)

    ev = sub.add_parser("eval", help="compare base and base+adapter on held-out pairs")
    data_options(ev)
    ev.add_argument("--adapter", required=True, help="adapter folder or name under adapters/")
    ev.add_argument("--limit", type=int, help="first N pairs only")
    ev.add_argument("--max-new-tokens", type=int, default=128)
    ev.set_defaults(run=cmd_eval)

    merge = sub.add_parser("merge", help="write a standalone model: dequantised base with the LoRA merged in")
    merge.add_argument("--adapter", required=True)
    merge.add_argument("--out", required=True)
    merge.set_defaults(run=cmd_merge)

    build = sub.add_parser("build-data", help="question/answer pairs (and refusals) from a knowledge base")
    build.add_argument("--kb", required=True)
    build.add_argument("--out", required=True)
    build.add_argument("--refusal-ratio", type=float, default=0.25)
    build.add_argument("--questions", type=int, default=0,
                       help="also N reading pairs: questions the local model writes about the documents' sentences")
    build.add_argument("--writer", help="model that writes those questions (default: the configured one; "
                                        "the larger preset writes better ones)")
    build.add_argument("--quiet", action="store_true")
    build.set_defaults(run=cmd_build_data)

    args = parser.parse_args(argv)
    from finetune.data import DataError
    from finetune.train import BaseModelError
    from kbcore.config import load_settings
    from kbcore.store import KnowledgeBaseError
    from engine.adapters import AdapterError
    from engine.models import ModelProvisionError

    settings = load_settings(args.config)
    try:
        return args.run(args, settings)
    except (DataError, AdapterError, BaseModelError, KnowledgeBaseError, ModelProvisionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
