"""Past one process: batch dubbing from a manifest (`engine batch`) and streaming on Ray Serve.

- `manifest`: read and validate a JSONL/CSV job list up front (every bad line, with its number).
- `fingerprint`: the inputs' content hashes + settings stored beside each output, so re-runs skip done jobs.
- `worker`: one loaded `LipSync` that runs jobs (in this process, or as a Ray actor).
- `local` / `ray_batch`: run a batch here, or on a Ray cluster with one long-lived actor per GPU/CPU worker.
- `serving`: a Ray Serve ingress in front of replicas that each run `engine serve`'s server.

`ray` is an optional extra: nothing here imports it at module level.
"""
