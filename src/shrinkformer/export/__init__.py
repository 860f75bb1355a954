"""Models out of shrinkformer, into the engines people deploy with."""
