"""Sample-quality measures that run offline on a CPU, for any checkpoint.

- :mod:`~bfncli.metrics.spelling`: text. The fraction of generated words found in the vocabulary of
  the model's training text, with its standard error across samples.
- :mod:`~bfncli.metrics.classifier`: a small CNN trained once on a data set's class labels and
  cached; its features feed the Fréchet distance, its predictions measure class-conditional
  samples (``predict_classes``).
- :mod:`~bfncli.metrics.distances`: the Fréchet distance between Gaussian fits of two feature sets
  (with bootstrap noise) and the unbiased kernel MMD² in pixel space (with a jackknife standard
  error).

``bfn eval --samples FILE`` (:mod:`bfncli.jobs.quality`) puts them together. Every number comes with
its noise and the sample sizes, since distances between sample sets are biased by their size:
compare them only at equal N.
"""
