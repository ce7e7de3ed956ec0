"""How a round's data becomes training items, and how a batch of items becomes a loss.

An objective names its loss terms and their coefficients; per micro-batch it returns each term's *sum*
and, before any forward pass, how many units (tokens, groups) each term averages over. The training
loop divides each sum by the unit count of the whole accumulated batch, so a long example weighs the
same whether it shares a micro-batch with short ones or not.

Adding an objective: a class with the methods of `Objective` and the declarations of `Declared` (what it
needs of the rest of the run), decorated with `@register("name")`, and a YAML file in conf/objective/.
No other module names an objective: the config checks, the task checks, the loop and the model card
read its declarations.

Where they live: base.py (the items, the protocol, the declarations and the registry), supervised.py
(star, sft), ranked_groups.py (what the pair objectives share), pairs.py (memphis, cpo_simpo, rpo) and
spin.py. Importing this package registers every objective.
"""

from rationale_loop.training.objectives.base import (OBJECTIVES, Declared, Objective, Options, RankItem, RoundData, SFTItem,
                                                     UndeclaredOption, build_objective)
from rationale_loop.training.objectives.supervised import ContinuedSFTObjective, StarObjective, SupervisedObjective
from rationale_loop.training.objectives.pairs import CpoSimpoObjective, MemphisObjective, RpoObjective
from rationale_loop.training.objectives.spin import SpinObjective

__all__ = ["OBJECTIVES", "Declared", "Objective", "Options", "RankItem", "RoundData", "SFTItem", "UndeclaredOption",
           "build_objective", "SupervisedObjective", "StarObjective", "ContinuedSFTObjective", "MemphisObjective",
           "CpoSimpoObjective", "RpoObjective", "SpinObjective"]
