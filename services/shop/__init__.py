"""The shop service, ``demo.shop.v1.OrderService``: what the README registers at run time.

Its proto (``examples/shop/v1/orders.proto``) is not in ``bridge.yaml``'s ``protos.include``, so
the bridge serves it only after ``bridge protos add``.
"""
