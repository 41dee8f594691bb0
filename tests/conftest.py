"""One CPU thread per torch process in the tests, set before torch is imported so that the processes the tests
start (CLI runs, workers, gloo ranks) inherit it. The tests' tensors are tiny: with two intra-op threads on a
2-core machine every small op pays a thread hand-off (several times the op itself, 6x on a shared machine), and
no test's result depends on the thread count. An explicit OMP_NUM_THREADS wins."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after the environment it reads)

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
