"""The advisor's LR grid grows past an edge: a cell whose best LR sits at the grid's edge gets the next LR past
it (an under-tuned no-replay curve would flatter replay), for a bounded number of rounds, deterministically (a
rerun trains nothing more and answers the same), and inside the time budget."""

from __future__ import annotations

import json

from test_advisor import preset_config

from replaylab.advisor import advise
from replaylab.advisor.design import Cell, Design, extend_at_edges, make_design


def test_the_next_lr_is_one_grid_step_past_the_edge(code_corpus, prose_corpus, tiny_tokenizer):
    cfg = preset_config(code_corpus, prose_corpus, tiny_tokenizer, lr_factors=[0.5, 1.0, 2.0])
    design: Design = make_design(cfg, 64, 16)
    low, high, mid = Cell(2, 0.0), Cell(4, 0.0), Cell(8, 0.0)
    assert extend_at_edges(design, {low: "low", high: "high", mid: ""}) == [(low, 2.5e-3), (high, 4e-2)]
    assert design.lrs_of(low) == [2.5e-3, 5e-3, 1e-2, 2e-2] and design.lrs_of(mid) == design.lrs
    extend_at_edges(design, {low: "low"})
    assert design.lrs_of(low)[0] == 1.25e-3
    assert design.num_runs == (len(design.cells) * 3 + 3) * len(cfg.seeds)


def test_an_edge_pick_grows_the_grid_and_a_rerun_trains_nothing(
    isolated_home, code_corpus, prose_corpus, tiny_tokenizer, tmp_path
):
    # A grid of two LRs: every cell's pick sits at an edge, so each gets one more LR (lr_extend=1 round).
    cfg = preset_config(code_corpus, prose_corpus, tiny_tokenizer, lr_factors=[1.0, 2.0], lr_extend=1)
    said: list[str] = []
    advise(cfg, tmp_path / "adv", say=said.append)
    grown = [s for s in said if s.startswith("best LR at its grid's edge")]
    assert len(grown) == 1, said
    sweep = json.loads((tmp_path / "adv" / "sweep" / "sweep.json").read_text())
    lrs: dict[tuple, set] = {}
    for e in sweep["runs"]:
        c = e["coords"] if "coords" in e else e["config"]["meta"]
        lrs.setdefault((c["budget"], c["rho"]), set()).add(c["lr"])
    assert any(len(v) == 3 for v in lrs.values()), lrs  # cells at an edge got a third LR
    assert all(len(v) in (2, 3) for v in lrs.values()), lrs
    first = (tmp_path / "adv" / "advice.json").read_text()
    manifests = {p: p.stat().st_mtime_ns for p in (tmp_path / "adv" / "sweep" / "runs").glob("*/manifest.json")}
    assert len(manifests) == len(sweep["runs"])

    said.clear()
    advise(cfg, tmp_path / "adv", say=said.append)  # the same grid regrows from the same runs; nothing trains
    assert len([s for s in said if s.startswith("best LR at its grid's edge")]) == 1, said
    assert {p: p.stat().st_mtime_ns for p in manifests} == manifests
    assert (tmp_path / "adv" / "advice.json").read_text() == first
