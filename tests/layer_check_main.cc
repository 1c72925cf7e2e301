// Linked with the object files of one layer and the layers below it (see the
// top-level CMakeLists.txt): a reference from a lower layer to a symbol of a
// higher one leaves an undefined symbol, and this link fails.
int main() { return 0; }
