"""PiWatch: Kubernetes events (from kubewatch) shown on a PiTraffic board on the router.

The app owns four traffic lights (south, west, north, east), a buzzer and a button. Requests only
queue work; a worker thread drives the GPIO so a slow LED pattern never blocks kubewatch.
"""

__version__ = "0.1.0"
