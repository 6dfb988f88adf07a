"""rayd's internals behind the public `ray` API."""
