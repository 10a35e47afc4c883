"""Files in and out: pictures and tensors, atomic output writes, hostfiles."""
