"""``osediff serve``: an HTTP service on Ray Serve with a FastAPI ingress.

- :mod:`.limits`: request parameters, byte and pixel limits, error statuses (no torch, no Ray)
- :mod:`.engine`: the loaded model and the batched run of checked requests (no Ray, no HTTP)
- :mod:`.deployment`: the Ray Serve deployment and its routes
- :mod:`.app`: replicas, autoscaling and queue bounds around it
"""
