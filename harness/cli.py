"""The `pgolf` command line. Exit codes: 0 pass (or warn), 1 fail, 2 unusable input or usage.

Each subcommand is a small handler that turns arguments into a call of the
module that does the work, prints its result and returns the exit code; every
error a user can cause is caught here and printed as one line, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from harness import __version__
from harness.atomic import write_text_atomic
from harness.check import check_folder
from harness.data.variants import DataError
from harness.findings import UsageError
from harness.report import render_markdown, render_terminal, verdict_json
from harness.rules import RulesError, load_rules

EXIT = {"pass": 0, "warn": 0, "fail": 1}


def cmd_check(args: argparse.Namespace) -> int:
    rules = load_rules(args.rules)
    verdict = check_folder(args.folder, rules, profile=args.profile, track_name=args.track,
                           against=args.against).to_dict()
    if args.json:
        write_text_atomic(args.json, verdict_json(verdict))
    if args.markdown:
        write_text_atomic(args.markdown, render_markdown(verdict))
    if not args.quiet:
        render_terminal(verdict, sys.stdout, verbose=args.verbose)
    return EXIT[verdict["status"]]


REPO = Path(__file__).resolve().parent.parent
DEMO_DATASET = REPO / "data/demo/datasets/fineweb10B_demo1024"
DEMO_TOKENIZER = REPO / "data/demo/tokenizers/demo_1024_bpe.model"


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds {text}: expected comma-separated integers, e.g. 1,2,3") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UsageError(f"--seeds {text}: expected distinct non-negative integers")
    return seeds


def cmd_run(args: argparse.Namespace) -> int:
    from harness.run import RunSpec, run_seed  # imports numpy and the event server: only runs need them

    rules = load_rules(args.rules)
    if args.track not in rules.tracks:
        raise UsageError(f"unknown track '{args.track}'; known: {', '.join(rules.tracks)}")
    for path, what in ((args.submission, "submission folder"), (args.data, "dataset folder")):
        if not path.is_dir():
            raise UsageError(f"{path}: no such {what}")
    if not args.tokenizer.is_file():
        raise UsageError(f"{args.tokenizer}: no such tokenizer file")
    if args.nproc < 1:
        raise UsageError("--nproc must be at least 1")
    limits = rules.hard_limits
    out = args.out or REPO / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}_{args.submission.resolve().name}"
    worst = 0
    for seed in _seeds(args.seeds):
        spec = RunSpec(args.submission.resolve(), args.data.resolve(), args.tokenizer.resolve(), seed, args.nproc,
                       out.resolve() / f"seed_{seed}", args.track, args.train_limit or limits["train_s"],
                       args.eval_limit or limits["eval_s"], limits["grace_s"], echo=not args.quiet,
                       legacy=args.legacy)
        verdict = run_seed(spec, rules).to_dict()
        if not args.quiet:
            render_terminal(verdict, sys.stdout, verbose=args.verbose)
            print(f"  run folder: {spec.out}")
        worst = max(worst, EXIT[verdict["status"]])
    return worst


def _limit(args: argparse.Namespace, rules, phase: str) -> float:
    return args.limit or rules.hard_limits[f"{phase}_s"]


def cmd_phase_train(args: argparse.Namespace) -> int:
    from harness.run import PhaseSpec, phase_succeeded, train_phase

    rules = load_rules(args.rules)
    if args.track not in rules.tracks:
        raise UsageError(f"unknown track '{args.track}'; known: {', '.join(rules.tracks)}")
    for path, what in ((args.submission, "submission folder"), (args.data, "data folder")):
        if not path.is_dir():
            raise UsageError(f"{path}: no such {what}")
    if args.nproc < 1:
        raise UsageError("--nproc must be at least 1")
    out = args.out.resolve()
    phase = PhaseSpec(out, args.data.resolve(), (args.artifact or out / "artifact").resolve(),
                      _limit(args, rules, "train"), rules.hard_limits["grace_s"], echo=not args.quiet)
    record = train_phase(phase, args.submission.resolve(), args.seed, args.nproc, args.track, rules)
    return 0 if phase_succeeded(record) else 1


def cmd_phase_eval(args: argparse.Namespace) -> int:
    from harness.run import PhaseSpec, artifact_of, eval_phase, phase_succeeded

    rules = load_rules(args.rules)
    if not args.data.is_dir():
        raise UsageError(f"{args.data}: no such data folder")
    out = args.out.resolve()
    phase = PhaseSpec(out, args.data.resolve(), (args.artifact or artifact_of(out)).resolve(),
                      _limit(args, rules, "eval"), rules.hard_limits["grace_s"], echo=not args.quiet)
    record = eval_phase(phase, rules)
    return 0 if not record["skipped"] and phase_succeeded(record) else 1


def cmd_verify(args: argparse.Namespace) -> int:
    from harness.run import verify

    if not args.out.is_dir():
        raise UsageError(f"{args.out}: no such seed folder")
    verdict = verify(args.out.resolve(), load_rules(args.rules)).to_dict()
    if not args.quiet:
        render_terminal(verdict, sys.stdout, verbose=args.verbose)
    return EXIT[verdict["status"]]


def cmd_export(args: argparse.Namespace) -> int:
    from harness.export import export_run

    folder = export_run(args.run, args.name, load_rules(args.rules), dest=args.dest, author=args.author,
                        github_id=args.github_id, date=args.date, force=args.force)
    if not args.quiet:
        print(f"records folder: {folder}\n  next: fill in the TODOs of its README.md, then pgolf check {folder}")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from harness.data.fetch import HubSource, LocalSource, fetch
    from harness.data.variants import get_variant
    from harness.data.verify import verify

    variant = get_variant(args.variant)
    source = (LocalSource(args.from_dir, args.remote_root) if args.from_dir
              else HubSource(args.repo, args.remote_root, args.revision) if args.repo else None)
    try:
        report = fetch(variant.name, args.dest, args.train_shards, source=source, progress=not args.quiet)
    except KeyboardInterrupt:
        print("pgolf: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    checked = verify(report.dataset_dir, variant)
    if not args.quiet:
        print(report.render())
        print(checked.render())
    return 0 if checked.ok else 1


def cmd_data_verify(args: argparse.Namespace) -> int:
    from harness.data.verify import verify

    if not args.folder.is_dir():
        raise UsageError(f"{args.folder}: no such folder")
    report = verify(args.folder, args.variant, args.tokenizer)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
    return 0 if report.ok else 1


def cmd_data_demo(args: argparse.Namespace) -> int:
    from harness.data.demo import DEMO_DIR, build_demo  # imports sentencepiece: only this command needs it

    paths = build_demo(args.out or DEMO_DIR)
    counts = json.loads(paths.manifest.read_text("utf-8"))["tokens"]
    print(f"demo data in {paths.root}\n  shards    {paths.dataset}  ({counts['train']:,} train tokens, "
          f"{counts['val']:,} val tokens)\n  tokenizer {paths.tokenizer}\n  manifest  {paths.manifest}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgolf", description="Check, run and rerun Parameter Golf submissions.")
    parser.add_argument("--version", action="version", version=f"pgolf {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # options several commands share, defined once
    rules = argparse.ArgumentParser(add_help=False)
    rules.add_argument("--rules", type=Path, metavar="FILE", help="use another rules YAML (default: bundled)")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("-q", "--quiet", action="store_true", help="print nothing; rely on the exit code and files")
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", help="also list passes inside failing groups")

    check = commands.add_parser("check", parents=[rules, verbose, quiet], help="judge a submission folder before its PR is opened",
                                description="Judge a records/<track>/YYYY-MM-DD_Name/ folder: files, "
                                "submission.json, claims against the seed logs, artifact bytes, time limits, "
                                "significance against a frontier, and a static legality lint.")
    check.add_argument("folder", type=Path, help="the submission folder")
    check.add_argument("--profile", choices=["strict", "historic"], default="strict",
                       help="submission.json schema: strict for new submissions (default), historic accepts "
                            "every variant in the challenge's records")
    check.add_argument("--track", help="judge against this track instead of the one the folder sits in")
    check.add_argument("--against", metavar="DIR|BPB,BPB,...",
                       help="the frontier: a record folder, or its per-seed val_bpb values")
    check.add_argument("--json", type=Path, metavar="FILE", help="write the verdict as JSON (verdict.schema.json)")
    check.add_argument("--markdown", type=Path, metavar="FILE", help="write a Markdown summary for a CI step")
    check.set_defaults(handler=cmd_check)

    run = commands.add_parser("run", parents=[rules, verbose, quiet], help="one seeded run as isolated, timed train and eval phases",
                              description="Run a submission's train phase (training shards only, must leave an "
                              "artifact) and eval phase (artifact + validation shards, no network) under torchrun; "
                              "the harness measures the clocks, counts the artifact bytes, computes val_bpb itself "
                              "and audits the score-first ledger. Defaults: the tiny example on the embedded demo data.")
    run.add_argument("--submission", type=Path, default=REPO / "examples/tiny", help="folder with train_gpt.py")
    run.add_argument("--seeds", default="1", help="comma-separated seeds, one run each (default: 1)")
    run.add_argument("--nproc", type=int, default=2, help="ranks per phase (torchrun --nproc_per_node)")
    run.add_argument("--data", type=Path, default=DEMO_DATASET, help="folder with fineweb_{train,val}_*.bin")
    run.add_argument("--tokenizer", type=Path, default=DEMO_TOKENIZER, help="SentencePiece model file")
    run.add_argument("--out", type=Path, help="run folder (default: runs/<time>_<submission>); seeds go in seed_<s>/")
    run.add_argument("--track", default="track_10min_16mb", help="track whose limits judge the run")
    run.add_argument("--train-limit", type=float, help="hard limit of the train phase in s (default: rules.yaml)")
    run.add_argument("--eval-limit", type=float, help="hard limit of the eval phase in s (default: rules.yaml)")
    run.add_argument("--legacy", action="store_true",
                     help="the script does not speak the protocol: run it as one job (train + eval hard limits, no "
                          "network, DATA_PATH with both splits) and read its scores from its log; the verdict "
                          "lists the guarantees this leaves unenforced")
    run.set_defaults(handler=cmd_run)

    phase = commands.add_parser("phase", help="run one phase of one seed (what each container of a run does)",
                                description="Run the train or the eval phase of one seed by itself, as `pgolf run` "
                                "does, and record it in SEEDDIR/phase_<name>.json; `pgolf verify SEEDDIR` then "
                                "writes the verdict. Exit 0 when the job succeeded, 1 when it failed (recorded).")
    phase_commands = phase.add_subparsers(dest="phase_command", required=True, metavar="PHASE")
    phase_train = phase_commands.add_parser("train", parents=[rules, quiet], help="the train phase",
                                            description="Copy the submission into SEEDDIR/code and run its train job "
                                            "with DATA_PATH=--data (training shards and the tokenizer only).")
    phase_train.add_argument("--submission", type=Path, required=True, help="folder with train_gpt.py")
    phase_train.add_argument("--seed", type=int, required=True, help="the seed (SEED, PGOLF_SEED)")
    phase_train.add_argument("--nproc", type=int, default=1, help="ranks (torchrun --nproc_per_node)")
    phase_train.add_argument("--track", default="track_10min_16mb", help="track whose limits judge the run")
    phase_train.set_defaults(handler=cmd_phase_train)
    phase_eval = phase_commands.add_parser("eval", parents=[rules, quiet], help="the eval phase",
                                           description="Run the eval job of the seed whose train phase SEEDDIR "
                                           "holds, with DATA_PATH=--data (validation shards and the tokenizer "
                                           "only), the artifact read-only and the score ledger.")
    phase_eval.set_defaults(handler=cmd_phase_eval)
    for sub in (phase_train, phase_eval):
        sub.add_argument("--data", type=Path, required=True, help="the folder the job sees as DATA_PATH")
        sub.add_argument("--out", type=Path, required=True, metavar="SEEDDIR", help="the seed's folder")
        sub.add_argument("--artifact", type=Path, help="PGOLF_ARTIFACT_DIR (default: SEEDDIR/artifact, or where "
                         "the train phase left it)")
        sub.add_argument("--limit", type=float, help="hard limit in s (default: rules.yaml hard_limits)")

    verify = commands.add_parser("verify", parents=[rules, verbose, quiet], help="the verdict of a seed's phases",
                                 description="Assemble SEEDDIR/verdict.json from the phase records, the code and "
                                 "the artifact: exit 0 pass or warn, 1 fail.")
    verify.add_argument("out", type=Path, metavar="SEEDDIR", help="the seed's folder")
    verify.set_defaults(handler=cmd_verify)

    export = commands.add_parser("export", parents=[rules, quiet], help="turn a finished run into a PR-ready records folder",
                                 description="Write DEST/YYYY-MM-DD_NAME/ from a `pgolf run` folder: its code, a "
                                 "train_seed{S}.log per seed with the harness's measured numbers in lines pgolf check "
                                 "reads, submission.json from the same numbers, and a README skeleton to fill in.")
    export.add_argument("run", type=Path, help="the run folder (holding seed_<s>/verdict.json)")
    export.add_argument("--name", required=True, help="the Description part of YYYY-MM-DD_Description")
    export.add_argument("--author", help="submission.json author (default: a placeholder to fill in)")
    export.add_argument("--github-id", help="submission.json github_id (default: a placeholder to fill in)")
    export.add_argument("--date", help="YYYY-MM-DD (default: today)")
    export.add_argument("--dest", type=Path, help="parent folder (default: records/<the run's track>); a track "
                        "folder's name sets the track")
    export.add_argument("--force", action="store_true", help="export even when the run's verdict is FAIL")
    export.set_defaults(handler=cmd_export)

    data = commands.add_parser("data", help="challenge data: the embedded demo, download, verification")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    demo = data_commands.add_parser("demo", help="(re)build the embedded demo dataset, byte for byte",
                                    description="Train the demo tokenizer on the committed public-domain corpus "
                                    "and export challenge-format shards; deterministic, so rebuilding in place "
                                    "changes nothing.")
    demo.add_argument("--out", type=Path, help="output folder (default: data/demo in this checkout)")
    demo.set_defaults(handler=cmd_data_demo)

    fetch = data_commands.add_parser("fetch", help="download the published FineWeb shards and tokenizer",
                                     description="Download all validation shards, the first N training shards and "
                                     "the tokenizer of a variant from its Hugging Face dataset repository (the "
                                     "challenge's own source), with resume and verification.")
    fetch.add_argument("--variant", required=True, help="sp1024, sp4096, sp8192, caseops, byte260")
    fetch.add_argument("--train-shards", type=int, default=80, help="training shards to fetch (default: 80)")
    fetch.add_argument("--dest", type=Path, default=Path("data"), help="destination root (default: ./data)")
    fetch.add_argument("--repo", help="another Hugging Face dataset repository id")
    fetch.add_argument("--remote-root", default="datasets", help="folder of manifest.json in the repository")
    fetch.add_argument("--revision", help="repository revision (branch, tag or commit)")
    fetch.add_argument("--from-dir", type=Path, help="a local folder laid out like the hub repository")
    fetch.add_argument("-q", "--quiet", action="store_true", help="no progress bar or report")
    fetch.set_defaults(handler=cmd_data_fetch)

    verify = data_commands.add_parser("verify", help="check a dataset folder: headers, sizes, token counts, hash")
    verify.add_argument("folder", type=Path, help="e.g. data/datasets/fineweb10B_sp8192")
    verify.add_argument("--variant", help="the variant (default: from the folder name or the token count)")
    verify.add_argument("--tokenizer", type=Path, help="tokenizer file (default: ../../tokenizers/<name>)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(handler=cmd_data_verify)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except (UsageError, RulesError, DataError) as exc:
        print(f"pgolf: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pgolf: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
