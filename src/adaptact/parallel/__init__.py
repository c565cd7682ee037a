"""Tensor parallelism for adaptact's activations on torch's own DTensor stack.

``ChannelwiseParallel`` is the ``ParallelStyle`` of an activation between a column-parallel
producer and a row-parallel consumer (LLaMA's ``down(act(gate(x)) * up(x))``); ``plan`` adds it
to a ``parallelize_module`` plan for every adaptact activation that needs it. FSDP2
(``fully_shard``) needs nothing of adaptact's: its modules are plain parameters and buffers.
"""

from .plan import plan
from .style import ChannelwiseParallel, channels_of

__all__ = ["ChannelwiseParallel", "channels_of", "plan"]
