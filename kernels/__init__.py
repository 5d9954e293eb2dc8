"""Hot loops with pure-``jnp`` references, installed as ``shed_jax.kernels`` (package-dir mapping).

``kmeans``: chunked nearest-centroid assignment (``assign``, ``assign_labels``) and its un-chunked
reference ``assign_reference``.
"""
