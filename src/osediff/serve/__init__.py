"""``osediff serve``: an HTTP service on Ray Serve, a light FastAPI ingress in front of the model.

- :mod:`.limits`: request parameters, byte and pixel limits, body deadlines, error statuses (no torch, no Ray)
- :mod:`.engine`: the loaded model and the batched run of checked requests (no Ray, no HTTP)
- :mod:`.edge`: timeouts and caps, request ids, the JSON error shape, the middleware of Ray's HTTP proxy
- :mod:`.body`: the body as it arrives, the multipart form, its OpenAPI description
- :mod:`.ingress`: the ingress deployment: HTTP, body deadlines, checks, probes, errors as JSON
- :mod:`.model`: the model deployment: an engine per replica behind ``serve.batch``
- :mod:`.control`: draining on SIGTERM
- :mod:`.logs`: access and warning lines, text or JSON
- :mod:`.app`: both deployments, replicas, queue bounds and HTTP options, and starting them
"""
