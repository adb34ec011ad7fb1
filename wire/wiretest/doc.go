// Package wiretest holds helpers for tests that talk over package wire,
// such as a throwaway cluster CA. Only tests import it; it must not grow
// fakes of aggregator or agent behaviour, which belong to their packages.
package wiretest
