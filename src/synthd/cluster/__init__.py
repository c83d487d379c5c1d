"""synthd on a Ray cluster: the GPU inventory read from the cluster's nodes, model replicas as Ray
actors in placement groups on the node the planner chose, and fine-tuning jobs as Ray actors
reserving their GPUs.

Only this package imports ``ray`` (the ``synthd[ray]`` extra); nothing outside it does unless
``synthd serve --ray-address`` asks for a cluster.
"""
