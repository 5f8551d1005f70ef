"""Run under torchrun by test_distributed.py: every rank's shared embedding equals one process's."""

import sys

import numpy as np
import torch
from torch.utils.data import Subset

from robustdml.data import evaluation_sets
from robustdml.engine.distributed import finish_distributed, init_distributed
from robustdml.evaluation import embed
from robustdml.evaluation.shards import Shards
from robustdml.models import create_model

rank, world, _ = init_distributed()
torch.manual_seed(0)
model = create_model("small-cnn", embedding_dim=16, in_channels=1).eval()
query, _ = evaluation_sets("digits")
for n in (len(query), 7, 1):  # an odd size, fewer items than a batch, fewer items than ranks
    data = Subset(query, range(n))
    got = embed(model, data, 64, shards=Shards.of_launch())
    want, labels = embed(model, data, 64)
    # the same rows in the same order, from the same batches: the same numbers
    assert torch.equal(got[0], want) and np.array_equal(got[1], labels), n
print(f"rank {rank} of {world}: ok")
finish_distributed()  # rank 1 is done long before rank 0: leaving with the group open could abort it
sys.exit(0)
