"""`engine batch`: lip-sync every job of a manifest (JSONL or CSV), here or on a Ray cluster.

Each line names `video`, `audio`, `output` and optionally `preset`, `steps`, `guidance`, `deepcache`,
`seed`, `face`, `strict_faces`, `crf`, `length` (as `engine run` names them; the options below are the defaults
for lines that do not set them). Every line is checked before any work; a bad manifest exits 2 naming
each bad line. Jobs whose outputs are up to date (see `<output>.job.json`) are skipped, so a batch
can be re-run after an interruption. Exit 0 when no job failed, 1 when some did (see the report).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.cli.options import add_generation_options, add_length_option, add_model_options, add_output_audio_option
from engine.cluster.serving import add_ray_resource_options
from engine.errors import InvalidInputError


def register(subparsers) -> None:
    p = subparsers.add_parser("batch", help="lip-sync every job of a manifest, locally or on Ray",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", help="jobs, one per line: .jsonl / .ndjson (JSON objects) or .csv (with a header)")
    model = p.add_argument_group("model and placement (for the whole batch, as in engine run)")
    add_model_options(model, device_help="auto | cpu | cuda[:N] (on Ray: each worker's own GPU)")
    jobs = p.add_argument_group("job settings (defaults for lines that do not set them)")
    add_generation_options(jobs)
    jobs.add_argument("--strict-faces", action="store_true", help="a frame without a face fails its job")
    jobs.add_argument("--crf", type=int, default=18, help="x264 quality of every output (default 18)")
    add_length_option(jobs)
    add_output_audio_option(jobs)
    run = p.add_argument_group("running")
    run.add_argument("--ray", nargs="?", const="default", metavar="ADDRESS",
                     help="run on Ray: local (a private cluster for this run), auto or ray://HOST:PORT (an existing "
                          "one); without ADDRESS, Ray's default (RAY_ADDRESS or a running cluster, else a new one)")
    run.add_argument("--workers", type=int, help="Ray actors (default: one per GPU, else one per --num-cpus CPUs)")
    add_ray_resource_options(run, "actor")
    run.add_argument("--jobs-per-worker", type=int, default=2,
                     help="jobs a worker (or this process) holds at once for its engine core to batch (default 2)")
    run.add_argument("--max-attempts", type=int, default=3,
                     help="tries per job when the worker running it dies (default 3)")
    run.add_argument("--force", action="store_true", help="run every job, even those whose outputs are up to date")
    run.add_argument("--report", help="JSON report path (default: <manifest>.report.json beside the manifest)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_batch)


def report_path(args: argparse.Namespace) -> Path:
    """The report's path, checked as every output is (folder writable, name fits NAME_MAX); run_batch then
    checks it against every input and output of the batch (engine.media.paths.check_write_plan)."""
    from engine.media.paths import check_output

    manifest = Path(args.manifest).expanduser().absolute()
    path = Path(args.report).expanduser().absolute() if args.report else manifest.with_name(
        manifest.name + ".report.json")
    if not path.parent.is_dir():
        raise InvalidInputError(f"--report {path}: expected an existing folder, found no folder {path.parent}")
    return check_output(path, inputs=(("manifest", manifest),), suffixes=None, what="--report")


def _batch(args: argparse.Namespace) -> int:
    from engine.cluster.batch import run_batch
    from engine.cluster.manifest import JobSettings
    from engine.cluster.options import ModelOptions
    from engine.errors import expect

    # the same bounds locally as on Ray (RayOptions): 0 is refused, never silently run as 1
    expect(args.jobs_per_worker >= 1, InvalidInputError, "--jobs-per-worker", ">= 1", args.jobs_per_worker)
    expect(args.max_attempts >= 1, InvalidInputError, "--max-attempts", ">= 1", args.max_attempts)
    ray = None
    if args.ray is not None:
        from engine.extras import require

        require("ray", what="engine batch --ray")
        from engine.cluster.ray_batch import RayOptions
        from engine.cluster.ray_env import check_address

        ray = RayOptions(address=check_address(args.ray), workers=args.workers, num_gpus=args.num_gpus,
                         num_cpus=args.num_cpus, jobs_per_worker=args.jobs_per_worker,
                         max_attempts=args.max_attempts)
    report_file = report_path(args)
    model = ModelOptions.from_args(args)
    defaults = JobSettings(preset=args.preset, steps=args.steps, guidance=args.guidance, deepcache=args.deepcache,
                           seed=args.seed, face=args.face, strict_faces=args.strict_faces, crf=args.crf,
                           length=args.length, output_audio=args.output_audio)
    report = run_batch(args.manifest, model=model, defaults=defaults, ray=ray, force=args.force,
                       progress=False if args.no_progress else None, in_flight=args.jobs_per_worker,
                       report=str(report_file))
    print(report.summary())
    sys.stdout.flush()
    write_report(report, report_file)
    print(f"report: {report_file}")
    sys.stdout.flush()
    return 0 if report.ok else 1


def write_report(report, path: Path) -> None:
    """Write the report atomically; when that fails (OutputWriteError: disk full), say where the per-job records
    are: every finished job's `<output>.job.json` was written when it finished and still says so."""
    from engine.cluster.fingerprint import FILE_MODE, sidecar_path
    from engine.cluster.outcome import DONE
    from engine.errors import OutputWriteError
    from engine.weights.checkpoints import write_json

    try:
        write_json(report.to_json(), path)
        path.chmod(FILE_MODE)
    except OutputWriteError as exc:
        done = [o for o in report.outcomes if o.status == DONE]
        records = ", ".join(str(sidecar_path(o.output)) for o in done[:3]) + (" ..." if len(done) > 3 else "")
        raise OutputWriteError(f"{exc}; the batch report was not written, but every finished job's record "
                               f"is beside its output ({len(done)} done{': ' + records if done else ''})") from exc
