class WrappedNormal:  # placeholder, being written
    pass
