-- Seeds the in-memory ERP database of invoice_audit.yaml from the CSV beside it.
CREATE TABLE vendors AS SELECT * FROM read_csv('data/vendors.csv', header = true);
