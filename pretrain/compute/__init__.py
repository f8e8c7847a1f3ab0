"""What a step costs and what a chip offers: encoder FLOPs and MFU (`flops.py`), the chip table
(`chips.py`). Leaves of the house: the loop, the tasks and the pod plan all read them."""
