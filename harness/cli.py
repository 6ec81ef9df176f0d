"""The `pgolf` command line. Exit codes: 0 pass (or warn), 1 fail, 2 unusable input or usage.

Each subcommand is a small handler that turns arguments into a call of the
module that does the work, prints its result and returns the exit code; every
error a user can cause is caught here and printed as one line, never a traceback.
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import math
import re
import signal
import uuid
import sys
from pathlib import Path

from harness import __version__
from harness.atomic import write_output
from harness.check.checker import check_folder
from harness.data.variants import DataError
from harness.findings import UsageError
from harness.paths import DEMO_DATASET, DEMO_TOKENIZER, TINY_EXAMPLE, default_run_folder, shown
from harness.report import render_markdown, render_terminal, verdict_json
from harness.rules import RulesError, load_rules
from harness.run.container import DEFAULT_IMAGE

EXIT = {"pass": 0, "warn": 0, "fail": 1}


def cmd_check(args: argparse.Namespace) -> int:
    rules = load_rules(args.rules)
    verdict = check_folder(args.folder, rules, profile=args.profile, track_name=args.track,
                           against=args.against).to_dict()
    if args.json:
        write_output(args.json, verdict_json(verdict))
    if args.markdown:
        write_output(args.markdown, render_markdown(verdict))
    if not args.quiet:
        render_terminal(verdict, sys.stdout, verbose=args.verbose)
    return EXIT[verdict["status"]]


def _seeds(text: str) -> list[int]:
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isascii() and part.isdigit() for part in parts):
        raise UsageError(f"--seeds {text}: expected comma-separated non-negative integers, e.g. 1,2,3")
    seeds = [int(part) for part in parts]
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text}: a seed is repeated")
    return seeds


def _seconds(flag: str, value: float | None) -> float | None:
    """A limit from the command line: a finite number of seconds above 0, or None for the rules' own."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} {value}: expected a positive number of seconds")
    return value


def _nproc(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise UsageError(f"--nproc {value}: expected at least 1")
    return value


def _backend(args: argparse.Namespace):
    """Where the jobs run: natively, or with --container/--image/--gpus/--memory as containers."""
    from harness.run.backend import Native
    from harness.run.container import Container

    if not args.container:
        given = [flag for flag, value in (("--image", args.image), ("--gpus", args.gpus), ("--memory", args.memory))
                 if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: only with --container")
        return Native()
    if args.gpus is not None and args.gpus < 0:
        raise UsageError("--gpus must be 0 or more")
    if args.memory is not None and not re.fullmatch(r"[1-9][0-9]*[bkmg]?", args.memory.lower()):
        raise UsageError(f"--memory {args.memory}: expected bytes with an optional unit, e.g. 8g or 512m")
    return Container(args.image or DEFAULT_IMAGE, args.gpus, args.memory)


def _folders(*pairs: tuple[Path, str]) -> None:
    """Each (path, what) must be an existing folder: the one-line usage error otherwise."""
    for path, what in pairs:
        if not path.is_dir():
            raise UsageError(f"{path}: no such {what}")


def _dataset(data: Path, tokenizer: Path) -> None:
    """A run needs both splits and the tokenizer: without them the job would start and fail inside."""
    from harness.data.shards import train_shards, val_shards

    _folders((data, "dataset folder"))
    train, val = train_shards(data), val_shards(data)
    if not train or not val:
        raise UsageError(f"--data {data}: expected fineweb_train_*.bin and fineweb_val_*.bin shards, found "
                         f"{len(train)} training and {len(val)} validation")
    if not tokenizer.is_file():
        raise UsageError(f"{tokenizer}: no such tokenizer file")


def cmd_run(args: argparse.Namespace) -> int:
    from harness.run.probe import probe_and_verify
    from harness.run.seed import RunSpec, run_seed  # imports numpy and the event server: only runs need them
    from harness.run.seedfolder import stamp_run

    rules = load_rules(args.rules)
    backend = _backend(args)
    if args.probe and args.legacy:
        raise UsageError("--probe reruns the eval phase: a --legacy run has none")
    sampling = _sampling(args)
    rules.track(args.track)  # an unknown track stops here
    _folders((args.submission, "submission folder"))
    _dataset(args.data, args.tokenizer)
    _nproc(args.nproc)
    seeds = _seeds(args.seeds)
    train_s = _seconds("--train-limit", args.train_limit) or rules.hard_limit(args.track, "train")
    eval_s = _seconds("--eval-limit", args.eval_limit) or rules.hard_limit(args.track, "eval")
    out = args.out or default_run_folder("", args.submission.resolve().name)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out}: already exists and is not empty; a run is never extended or mixed with "
                         "another (choose a new folder)")
    run_id, worst = uuid.uuid4().hex, 0
    for seed in seeds:
        spec = RunSpec(args.submission.resolve(), args.data.resolve(), args.tokenizer.resolve(), seed, args.nproc,
                       out.resolve() / f"seed_{seed}", args.track, train_s, eval_s, rules.phase_clock["grace_s"],
                       echo=not args.quiet, legacy=args.legacy, backend=backend)
        try:
            verdict = run_seed(spec, rules).to_dict()
            if args.probe:
                verdict = probe_and_verify(spec.out, rules, backend, sampling, echo=not args.quiet).to_dict()
            stamp_run(spec.out, run_id)
        except KeyboardInterrupt:
            print(f"pgolf: interrupted; the running phase was stopped{' and its container removed' if args.container else ''}"
                  f", {spec.out} is unfinished", file=sys.stderr)
            return 130
        if not args.quiet:
            render_terminal(verdict, sys.stdout, verbose=args.verbose)
            print(f"  run folder: {shown(spec.out)}")
        worst = max(worst, EXIT[verdict["status"]])
    return worst


def cmd_clean(args: argparse.Namespace) -> int:
    from harness.run.container import clean  # imports the Docker SDK: only this command needs it

    removed, in_use = clean()
    if not args.quiet:
        print(f"removed {len(removed)} container(s) left by killed pgolf runs{': ' + ', '.join(removed) if removed else ''}")
        if in_use:
            print(f"kept {len(in_use)} container(s) of pgolf runs still going: {', '.join(in_use)}")
    return 0


def _limit(args: argparse.Namespace, rules, track: str, phase: str) -> float:
    return _seconds("--limit", args.limit) or rules.hard_limit(track, phase)


def cmd_phase_train(args: argparse.Namespace) -> int:
    from harness.run.phases import PhaseSpec, train_phase
    from harness.run.seedfolder import ARTIFACT, phase_succeeded

    rules = load_rules(args.rules)
    rules.track(args.track)  # an unknown track stops here
    _folders((args.submission, "submission folder"), (args.data, "data folder"))
    _nproc(args.nproc)
    if args.seed < 0:  # refused here, not written into a record no verdict can hold
        raise UsageError(f"--seed {args.seed}: expected a non-negative integer")
    out = args.out.resolve()
    phase = PhaseSpec(out, args.data.resolve(), (args.artifact or out / ARTIFACT).resolve(),
                      _limit(args, rules, args.track, "train"), rules.phase_clock["grace_s"], echo=not args.quiet)
    record = train_phase(phase, args.submission.resolve(), args.seed, args.nproc, args.track, rules)
    return 0 if phase_succeeded(record, out) else 1


def cmd_phase_eval(args: argparse.Namespace) -> int:
    from harness.run.phases import PhaseSpec, eval_phase
    from harness.run.seedfolder import artifact_of, phase_succeeded, read_record

    rules = load_rules(args.rules)
    _folders((args.data, "data folder"))
    limit = _seconds("--limit", args.limit)
    out = args.out.resolve()
    train = read_record(out, "train")
    if train is None:
        raise UsageError(f"{out}: no phase_train.json; run `pgolf phase train` first")
    phase = PhaseSpec(out, args.data.resolve(), (args.artifact or artifact_of(out)).resolve(),
                      limit or rules.hard_limit(train["track"], "eval"), rules.phase_clock["grace_s"],
                      echo=not args.quiet)
    record = eval_phase(phase, rules)
    return 0 if not record["skipped"] and phase_succeeded(record, out) else 1


def _sampling(args: argparse.Namespace):
    """--canaries and --cuts as the probe's Sampling, None when no probe is asked for (then they are an error)."""
    from harness.run.probe import Sampling

    given = {name: value for name in ("canaries", "cuts") if (value := getattr(args, name)) is not None}
    if not getattr(args, "probe", True):
        if given:
            raise UsageError(f"--{next(iter(given))} shapes a probe: add --probe")
        return None
    sampling = Sampling(**given)
    if sampling.canaries < 1 or sampling.cuts < 0:
        raise UsageError(f"--canaries {sampling.canaries} --cuts {sampling.cuts}: expected at least one canary and "
                         "no negative number of cuts")
    return sampling


def cmd_probe(args: argparse.Namespace) -> int:
    from harness.run.probe import probe_and_verify

    _folders((args.run, "run folder"))
    sampling = _sampling(args)
    wanted = _seeds(args.seeds) if args.seeds else None
    folders = sorted(p for p in args.run.iterdir() if re.fullmatch(r"seed_-?\d+", p.name)
                     and (wanted is None or int(p.name[5:]) in wanted))
    if not folders:
        raise UsageError(f"{args.run}: no seed_<s> folder{' of --seeds ' + args.seeds if wanted else ''} to probe")
    backend, rules, worst = _backend(args), load_rules(args.rules), 0
    for folder in folders:
        try:
            verdict = probe_and_verify(folder.resolve(), rules, backend, sampling, args.secret,
                                       echo=not args.quiet).to_dict()
        except KeyboardInterrupt:
            print(f"pgolf: interrupted; {folder / 'probe'} is unfinished", file=sys.stderr)
            return 130
        if not args.quiet:
            render_terminal(verdict, sys.stdout, verbose=args.verbose)
        worst = max(worst, EXIT[verdict["status"]])
    return worst


def cmd_verify(args: argparse.Namespace) -> int:
    from harness.run.judge import verify

    _folders((args.out, "seed folder"))
    verdict = verify(args.out.resolve(), load_rules(args.rules)).to_dict()
    if not args.quiet:
        render_terminal(verdict, sys.stdout, verbose=args.verbose)
    return EXIT[verdict["status"]]


def cmd_rerun(args: argparse.Namespace) -> int:
    from harness.rerun.rerun import RerunRequest, rerun
    from harness.rerun.report import render_markdown as rerun_markdown

    if not args.merge:  # --merge runs nothing: it needs no data
        _dataset(args.data, args.tokenizer)
    out = (args.out or default_run_folder("rerun_", args.folder.resolve().name)).resolve()
    request = RerunRequest(args.folder, out, args.data.resolve(), args.tokenizer.resolve(),
                           seeds=_seeds(args.seeds) if args.seeds else None, nproc=_nproc(args.nproc),
                           track=args.track, legacy=args.legacy, resume=args.resume, merge=tuple(args.merge or ()),
                           against=args.against, train_limit_s=_seconds("--train-limit", args.train_limit),
                           eval_limit_s=_seconds("--eval-limit", args.eval_limit), echo=not args.quiet,
                           probe=_sampling(args),
                           backend=_backend(args))
    try:
        verdict = rerun(request, load_rules(args.rules)).to_dict()
    except KeyboardInterrupt:
        print(f"pgolf: interrupted; add --resume (same options, --out {out}) to continue at the first unfinished seed",
              file=sys.stderr)
        return 130
    if args.markdown:
        write_output(args.markdown, rerun_markdown(verdict))
    if not args.quiet:
        render_terminal(verdict, sys.stdout, verbose=args.verbose)
        print(f"  rerun folder: {shown(out)} (verdict.json, report.md, report.html)")
    return EXIT[verdict["status"]]


def cmd_export(args: argparse.Namespace) -> int:
    from harness.export import export_run

    folder = export_run(args.run, args.name, load_rules(args.rules), dest=args.dest, author=args.author,
                        github_id=args.github_id, date=args.date, force=args.force)
    if not args.quiet:
        where = shown(folder)
        print(f"records folder: {where}\n  next: fill in the TODOs of its README.md, then pgolf check {where}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from harness.doctor import diagnose, render  # imports torch: only this command needs it

    findings = diagnose(load_rules(args.rules), args.track, args.only.split(",") if args.only else None)
    failed = any(f.status == "fail" for f in findings)
    if args.json:
        print(json.dumps({"track": args.track, "status": "fail" if failed else "pass",
                          "findings": [f.to_dict() for f in findings]}, indent=2))
    else:
        print(render(findings, args.track, partial=bool(args.only)), end="")
    return 1 if failed else 0


def cmd_data_views(args: argparse.Namespace) -> int:
    from harness.data.views import make_views

    _folders((args.root, "data folder"))
    views = make_views(args.root, args.dataset, args.tokenizer)
    if not args.quiet:
        print(f"train view {views.train}\nval view   {views.val}")
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

    _folders((args.folder, "folder"))
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
    probing = argparse.ArgumentParser(add_help=False)
    probing.add_argument("--canaries", type=int, help="probe: canary runs, each a change point too (default 1)")
    probing.add_argument("--cuts", type=int, help="probe: more change points, runs with other text after a random "
                         "position (default 0)")
    container = argparse.ArgumentParser(add_help=False)
    container.add_argument("--container", action="store_true", help="run every phase of every seed as its own "
                           "container of the pgolf image, through the Docker engine")
    container.add_argument("--image", help=f"with --container: the image (default: {DEFAULT_IMAGE}; pgolf:cuda for GPUs)")
    container.add_argument("--gpus", type=int, metavar="N", help="with --container: GPUs per container (default: all; "
                           "none on the CPU image)")
    container.add_argument("--memory", metavar="BYTES", help="with --container: memory limit per container, e.g. 64g "
                           "(default: none); past it the kernel kills the phase and the verdict says so")

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

    run = commands.add_parser("run", parents=[rules, verbose, quiet, container, probing], help="one seeded run as isolated, timed train and eval phases",
                              description="Run a submission's train phase (training shards only, must leave an "
                              "artifact) and eval phase (artifact + validation shards, no network) under torchrun; "
                              "the harness measures the clocks, counts the artifact bytes, computes val_bpb itself "
                              "and audits the score-first ledger. Defaults: the tiny example on the embedded demo data.")
    run.add_argument("--submission", type=Path, default=TINY_EXAMPLE,
                     help="folder with train_gpt.py (default: the tiny example; the reference submission is "
                          "submission/, its cpu-tiny preset on a machine without CUDA)")
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
    run.add_argument("--probe", action="store_true", help="after each seed, `pgolf probe` it: the eval job run "
                     "again on streams the harness builds, to judge causality and unread targets by behaviour")
    run.set_defaults(handler=cmd_run)

    probe = commands.add_parser("probe", parents=[rules, verbose, quiet, container, probing],
                                help="rerun a finished run's eval job on probe streams: causal scores, targets unread",
                                description="For each seed of RUNDIR, run its eval job again (same code, artifact and "
                                "sandbox) on validation streams the harness builds: two controls (the noise floor), "
                                "canaries (a random target after the real prefix) and cuts (other text after a random "
                                "position). NLLs before each change must equal the control's (C1), a canary must be "
                                "scored by the distribution the job sent for that context. Writes SEEDDIR/probe/ and "
                                "the verdict again; exit 0 pass or warn, 1 fail.")
    probe.add_argument("run", type=Path, metavar="RUNDIR", help="a `pgolf run` folder")
    probe.add_argument("--seeds", help="comma-separated seeds to probe (default: every seed_<s> folder)")
    probe.add_argument("--secret", type=int, help="the secret that picks the streams (default: drawn now); give "
                       "the one a probe.json records to rebuild its streams")
    probe.set_defaults(handler=cmd_probe)

    clean = commands.add_parser("clean", parents=[quiet], help="remove containers that killed pgolf runs left behind",
                                description="Remove every container labelled by pgolf whose harness process is gone "
                                "(a `pgolf run --container` that was killed); containers of runs still going are kept. "
                                "`pgolf run --container` does the same before it starts.")
    clean.set_defaults(handler=cmd_clean)

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
        sub.add_argument("--limit", type=float, help="hard limit in s (default: the track's limit + rules.yaml phase_clock)")

    verify = commands.add_parser("verify", parents=[rules, verbose, quiet], help="the verdict of a seed's phases",
                                 description="Assemble SEEDDIR/verdict.json from the phase records, the code and "
                                 "the artifact: exit 0 pass or warn, 1 fail.")
    verify.add_argument("out", type=Path, metavar="SEEDDIR", help="the seed's folder")
    verify.set_defaults(handler=cmd_verify)

    rerun = commands.add_parser("rerun", parents=[rules, verbose, quiet, container, probing], help="reproduce a submission's claimed seeds "
                                "and judge its claims", description="Run each seed a submission folder claims again "
                                "(phases, or one job with --legacy) into RUNDIR/seed_<s>/, and compare per seed: "
                                "val_bpb (difference, and in claimed standard deviations), artifact bytes, train and "
                                "eval times, steps; then the mean difference with its confidence interval, a Welch "
                                "test claimed vs reproduced and, with --against, the significance policies. Tolerances "
                                "come from rules.yaml (reproduction). Writes RUNDIR/verdict.json, report.md and a "
                                "self-contained report.html. Exit 0 reproduced (pass or warn), 1 not, 2 usage.")
    rerun.add_argument("folder", type=Path, help="the submission folder (submission.json and its seed logs)")
    rerun.add_argument("--seeds", help="comma-separated subset of the claimed seeds (default: all of them)")
    rerun.add_argument("--nproc", type=int, help="ranks per job (default: the world size the seed logs show, else "
                       "the track's GPU count, else 1)")
    rerun.add_argument("--data", type=Path, default=DEMO_DATASET, help="folder with fineweb_{train,val}_*.bin")
    rerun.add_argument("--tokenizer", type=Path, default=DEMO_TOKENIZER, help="SentencePiece model file")
    rerun.add_argument("--track", help="judge against this track instead of the one the folder sits in")
    rerun.add_argument("--legacy", action="store_true", help="the script does not speak the protocol: run each seed as "
                       "one job, as `pgolf run --legacy` does")
    rerun.add_argument("--out", type=Path, metavar="RUNDIR", help="rerun folder (default: runs/<time>_rerun_<folder>)")
    rerun.add_argument("--probe", action="store_true", help="probe each seed once it is run (see `pgolf probe`): "
                       "a probe FAIL fails the seed's run")
    rerun.add_argument("--resume", action="store_true", help="continue the rerun in RUNDIR: finished seeds are kept, "
                       "an unfinished seed folder is set aside as seed_<s>.incomplete-<n> and run again")
    rerun.add_argument("--merge", type=Path, nargs="+", metavar="DIR", help="run nothing: judge the finished "
                       "seed_<s>/ folders that separate jobs wrote into these folders (one job per seed)")
    rerun.add_argument("--against", metavar="DIR|BPB,BPB,...", help="the frontier: do the reproduced seeds still "
                       "clear the significance policies against it?")
    rerun.add_argument("--markdown", type=Path, metavar="FILE", help="also write report.md here (e.g. "
                       "$GITHUB_STEP_SUMMARY)")
    rerun.add_argument("--train-limit", type=float, help="hard limit of the train phase in s (default: rules.yaml)")
    rerun.add_argument("--eval-limit", type=float, help="hard limit of the eval phase in s (default: rules.yaml)")
    rerun.set_defaults(handler=cmd_rerun)

    export = commands.add_parser("export", parents=[rules, quiet], help="turn a finished run into a PR-ready records folder",
                                 description="Write DEST/YYYY-MM-DD_NAME/ from a `pgolf run` folder: its code, a "
                                 "train_seed{S}.log per seed with the harness's measured numbers in lines pgolf check "
                                 "reads, submission.json from the same numbers, and a README skeleton to fill in.")
    export.add_argument("run", type=Path, help="the run folder (holding seed_<s>/verdict.json)")
    export.add_argument("--name", required=True, help="the Description part of YYYY-MM-DD_Description")
    export.add_argument("--author", help="submission.json author (default: a placeholder to fill in)")
    export.add_argument("--github-id", help="submission.json github_id (default: a placeholder to fill in)")
    export.add_argument("--date", help="YYYY-MM-DD (default: today)")
    export.add_argument("--dest", type=Path, help="parent folder (default: records/<the run's track>, or "
                        "records/track_local for a run off that track's world size); a track folder's name sets "
                        "the track")
    export.add_argument("--force", action="store_true", help="export even when the run's verdict is FAIL")
    export.set_defaults(handler=cmd_export)

    doctor = commands.add_parser("doctor", parents=[rules], help="what this machine has for a record-track run",
                                 description="Print the GPUs, driver, CUDA, torch, FlashAttention-3, NCCL, shared "
                                 "memory, locked-memory limit and compiler this machine (or container) offers, run "
                                 "one FA3 call against PyTorch SDPA when a GPU is present, and list what is missing "
                                 "for a record-track run. Exit 0 when nothing is, 1 otherwise.")
    doctor.add_argument("--track", default="track_10min_16mb", help="the track whose hardware is wanted")
    doctor.add_argument("--only", metavar="CHECK,...", help="run only these checks (python, torch, driver, gpu, "
                        "nccl, fa3, shm, memlock, compiler, image)")
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    doctor.set_defaults(handler=cmd_doctor)

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

    views = data_commands.add_parser("views", help="per-phase views of a dataset for container mounts",
                                     description="Make ROOT/.pgolf/DATASET/train (training shards + tokenizer) and "
                                     ".../val (validation shards + tokenizer) as hard links, synced in place, so a "
                                     "container engine can mount each phase's data read-only.")
    views.add_argument("root", type=Path, help="the data folder holding datasets/ and tokenizers/")
    views.add_argument("--dataset", required=True, help="folder name under ROOT/datasets/")
    views.add_argument("--tokenizer", required=True, help="file name under ROOT/tokenizers/")
    views.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    views.set_defaults(handler=cmd_data_views)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a file name or claim UTF-8 cannot encode is shown escaped, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = _parser().parse_args(argv)
    if argv is None and hasattr(signal, "SIGUSR1"):  # the command itself: `kill -USR1` prints where it is, for a hang
        faulthandler.register(signal.SIGUSR1, all_threads=True)
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
