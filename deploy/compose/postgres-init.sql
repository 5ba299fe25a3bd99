-- One database per service: no service reads another's tables.
CREATE DATABASE pim_identity;
CREATE DATABASE pim_assignment;
CREATE DATABASE pim_approval;
CREATE DATABASE pim_alerting;
CREATE DATABASE pim_audit;
