"""The paper's strategies as run-config builders: `reference`, `finetune`, `midtrain`.

They live in `replaylab.schedule`, next to the two-stage solver they use; this module keeps the old
import path working (it imports from `replaylab.schedule`, never the other way round).
"""

from __future__ import annotations

from replaylab.schedule import PAPER_TARGET_FRACTION, STRATEGIES, finetune, midtrain, reference, target_budget

__all__ = ["PAPER_TARGET_FRACTION", "STRATEGIES", "reference", "finetune", "midtrain", "target_budget"]
