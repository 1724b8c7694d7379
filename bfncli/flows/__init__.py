"""The paper's mathematics and nothing else: Bayesian flows, output distributions and losses.

``ContinuousFlow`` covers continuous and discretized data (paper sections 4-5), ``DiscreteFlow``
discrete data (section 6). They know tensors, not networks, files or configs.
"""

from bfncli.flows.continuous import ContinuousFlow
from bfncli.flows.discrete import DiscreteFlow
from bfncli.flows.distributions import Bernoulli, Categorical, Delta, DiscretizedNormal

__all__ = ["ContinuousFlow", "DiscreteFlow", "Bernoulli", "Categorical", "Delta", "DiscretizedNormal"]
