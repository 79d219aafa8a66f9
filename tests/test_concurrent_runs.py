"""Two runs of the same competition in the same work dir at once (issue 22 item 4): both finish,
and every file they leave loads. They share the download (one competition lock), the token cache,
the frozen-prefix cache (one writer, many readers), the content-addressed store and the fold
checkpoints, each written under a unique temp name and renamed into place."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lora_tasks.testing import fake_kaggle as fk
from lora_tasks.testing.demo import build_demo_competition


def _run(work: str, endpoint: str, barrier, out: str) -> None:  # a spawned process: imports are its own
    import json

    from lora_tasks import steps
    from lora_tasks.options import RunOptions

    options = RunOptions(competition="demo", work_dir=work, kaggle_endpoint=endpoint, tiny=True, epochs=2,
                         max_seq_len=64, top_layers=1, submit=False, time_limit="1h")
    barrier.wait(timeout=120)
    result = steps.run_pipeline(options, run_key=f"run-{os.getpid()}")
    Path(out).write_text(json.dumps({"submission": str(result.submission_path),
                                     "adapters": [str(a.adapter_path) for a in result.adapters],
                                     "oof": [str(a.oof_path) for a in result.adapters]}))


def test_two_runs_at_once_in_one_work_dir_both_finish(creds, tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # two processes on two cores
    served = tmp_path / "served"
    build_demo_competition(served)
    work = tmp_path / "work"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    outs = [tmp_path / f"run{i}.json" for i in range(2)]
    with fk.serve(served) as server:
        procs = [ctx.Process(target=_run, args=(str(work), server.url, barrier, str(o))) for o in outs]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=600)
        codes = [p.exitcode for p in procs]
    assert codes == [0, 0], f"exit codes {codes}"
    results = [json.loads(o.read_text()) for o in outs]
    for r in results:
        frame = pd.read_csv(r["submission"])
        assert len(frame) > 0 and frame.notna().all().all()
        for path in r["oof"]:  # a fold's OOF file holds its held-out rows (NaN elsewhere)
            assert np.isfinite(np.load(path)).any()
        for path in r["adapters"]:
            assert Path(path).stat().st_size > 0
    # same inputs, same content-addressed results: the two runs agree on what they wrote
    assert results[0]["submission"] == results[1]["submission"]
    leftovers = [p for p in work.rglob("*") if ".tmp" in p.name or p.name.endswith(".partial")]
    assert not leftovers, f"temp files left behind: {leftovers[:5]}"


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
