"""The application built on the library: the HTTP service, ``penny-cache`` command, the
``make run`` launcher, the demo, the exporter's HTTP server and the embedded Redis. The
library never imports this package; only the HTTP service needs the ``[service]`` extra."""
