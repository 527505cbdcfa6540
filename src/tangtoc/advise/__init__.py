"""Should this training run on a GPU? (seed 7.1) Measured where possible, predicted where not.

* :mod:`~tangtoc.advise.count`: FLOPs, bytes and kernels of one training step, counted on fake tensors, with
  the FLOP formulas of :mod:`~tangtoc.advise.formulas` (PyTorch's, and recurrent layers');
* :mod:`~tangtoc.advise.predict`: a roofline and launch-overhead prediction of that step on a named GPU;
* :mod:`~tangtoc.advise.measure`: the step fit runs, timed here, and the host-to-device link;
* :mod:`~tangtoc.advise.recommend`: :func:`advise` measures the step on the CPU and every accelerator here,
  predicts it for target GPUs, finds the batch size where the answer flips, and recommends.

    import tangtoc as tt
    advice = tt.advise(model, (x, y), loss_fn=F.cross_entropy, epochs=10, dataset_size=50_000, targets=["h100"])
    print(advice.recommendation)
"""

from tangtoc.advise.count import CountingMode, OpCall, StepCount, count_step
from tangtoc.advise.decide import Crossover, LinearFit, MeasuredStep
from tangtoc.advise.measure import StepMeasurer, UncountedOp, measure_step
from tangtoc.advise.predict import Assumptions, Prediction, predict
from tangtoc.advise.recommend import Advice, Check, advise
from tangtoc.errors import CountError

__all__ = [
    "Advice",
    "Assumptions",
    "Check",
    "CountError",
    "CountingMode",
    "Crossover",
    "LinearFit",
    "MeasuredStep",
    "OpCall",
    "Prediction",
    "StepCount",
    "StepMeasurer",
    "UncountedOp",
    "advise",
    "count_step",
    "measure_step",
    "predict",
]
