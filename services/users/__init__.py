"""The example user directory: ``demo.users.v1.UserService`` over an in-memory store."""
