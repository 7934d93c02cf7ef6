"""What runs inside a local SageMaker job or endpoint process: the container side.

``toolkit`` lays out /opt/ml and runs a job through the real sagemaker-training toolkit;
``pytorch`` is its framework layer (``torchrun`` over the instances); ``warm`` and
``warm_launcher`` keep a warm-pool instance's interpreter; ``serving`` is a model server.
The control plane that starts them (the SageMaker API) is ``tuneloop.local.sagemaker``.
"""
