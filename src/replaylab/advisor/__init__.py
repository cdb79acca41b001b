"""The replay advisor: for one model and one target, how much generic data to replay while fine-tuning, what it
is worth in target data (with a 95% interval), and what it saves of the general domain.

    from replaylab.advisor import AdviceConfig, advise
    advice = advise(AdviceConfig(model="preset:mini", target="instructions"), "advice/")
    print(advice.verdict)

`replaylab advise` is the same from the command line. Design, method and how to read the answer: docs/advisor.md.
"""

from replaylab.advisor.answer import Advice, CellResult, ReplayResult
from replaylab.advisor.design import AdviceConfig, Design
from replaylab.advisor.run import AdvicePlan, advise, plan_advice

__all__ = ["Advice", "AdviceConfig", "AdvicePlan", "CellResult", "Design", "ReplayResult", "advise", "plan_advice"]
