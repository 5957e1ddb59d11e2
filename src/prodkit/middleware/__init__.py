"""prodkit's middlewares, one module each; import them from :mod:`prodkit`."""
