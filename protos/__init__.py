"""Protocol buffer sources (asgard/v1, grpc/health/v1) and the generated betterproto2 package `gen`."""
