"""Properties, pictures and learned parameters of activations."""

from .properties import Properties, gradient_flow, properties, response

__all__ = ["Properties", "gradient_flow", "properties", "response"]
