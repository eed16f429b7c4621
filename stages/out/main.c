/*
 * rampart-out main: hand the stage's parameters to the server skeleton.
 */
#include "mail/stage.h"

extern const struct stage_def out_stage;

int main(int argc, char **argv)
{
	return stage_main(&out_stage, argc, argv);
}
